"""Vision Transformers (Dosovitskiy et al. 2021), big_vision style.

Patches by a convolution with kernel = stride = patch size, a class token or
global average pooling, learned position embeddings, pre-norm encoder blocks
(LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP with GELU
-> residual), a final LayerNorm. The backbone returns the pooled representation
(the feature z); the project's `Classifier` adds the head, so Grad-ReLU and
Avg-Clustering apply to a ViT unchanged.

Parameter names are those of the AugReg checkpoints (google-research/
vision_transformer), so those load by name (models/pretrained.py):

  embedding/{kernel,bias}                       conv [p, p, C, D]
  cls                                           [1, 1, D] (pool='token')
  Transformer/posembed_input/pos_embedding      [1, 1 + h*w, D] ('token'),
                                                [1, h*w, D] ('gap')
  Transformer/encoderblock_N/LayerNorm_0        before attention
  Transformer/encoderblock_N/MultiHeadDotProductAttention_1/{query,key,value}
                                                kernel [D, heads, D/heads]
  Transformer/encoderblock_N/MultiHeadDotProductAttention_1/out
                                                kernel [heads, D/heads, D]
  Transformer/encoderblock_N/LayerNorm_2        before the MLP
  Transformer/encoderblock_N/MlpBlock_3/Dense_{0,1}
  Transformer/encoder_norm

No BatchNorm: a ViT has no `batch_stats`, and `axis_name` is accepted (the
registry passes it to every backbone) and unused. Stochastic depth draws from
the 'dropout' rng stream, only when `train` and `drop_path_rate` > 0; the masks
are per device, so unlike the rest of the step they depend on the device count.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLS = ('token', 'gap')

# big_vision's / the AugReg code's initialisers.
_dense_inits = dict(
  kernel_init=nn.initializers.xavier_uniform(),
  bias_init=nn.initializers.normal(stddev=1e-6),
)


def drop_path(module: nn.Module, x, rate: float, train: bool):
  """Stochastic depth: a residual branch dropped per sample, kept ones scaled up."""
  if not train or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(
    module.make_rng('dropout'), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
  )
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dense."""

  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    x = nn.Dense(
      self.mlp_dim, dtype=self.dtype, name='Dense_0', **_dense_inits
    )(x)
    x = nn.gelu(x)
    return nn.Dense(width, dtype=self.dtype, name='Dense_1', **_dense_inits)(x)


class EncoderBlock(nn.Module):
  """Pre-norm block: x + attn(LN(x)), then x + mlp(LN(x)), each drop-pathed."""

  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      kernel_init=nn.initializers.xavier_uniform(),
      force_fp32_for_softmax=True,
      deterministic=True,
      name='MultiHeadDotProductAttention_1',
    )(y, y)
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, name='MlpBlock_3')(y)
    return x + drop_path(self, y, self.drop_path_rate, train)


class AddPositionEmbedding(nn.Module):
  """Learned position embeddings [1, tokens, D], added to the token sequence."""

  @nn.compact
  def __call__(self, x):
    pos = self.param(
      'pos_embedding',
      nn.initializers.normal(stddev=0.02),
      (1, x.shape[1], x.shape[2]),
    )
    return x + pos.astype(x.dtype)


class Encoder(nn.Module):
  """Position embeddings, `depth` blocks, the final LayerNorm."""

  depth: int
  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = AddPositionEmbedding(name='posembed_input')(x)
    for i in range(self.depth):
      # Stochastic depth grows linearly with depth (Huang et al.; timm, DeiT).
      rate = self.drop_path_rate * i / max(self.depth - 1, 1)
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        drop_path_rate=rate,
        dtype=self.dtype,
        name=f'encoderblock_{i}',
      )(x, train)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


class ViT(nn.Module):
  """ViT backbone: images [N, H, W, C] -> features [N, width]."""

  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = 'token'
  drop_path_rate: float = 0.0
  axis_name: Optional[str] = (
    None  # No BatchNorm: nothing to reduce across devices.
  )
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.pool not in POOLS:
      raise ValueError(f'ViT pool={self.pool!r} is not one of {POOLS}')
    if self.width % self.num_heads:
      raise ValueError(
        f'ViT width {self.width} is not divisible by num_heads {self.num_heads}'
      )
    p = self.patch_size
    x = nn.Conv(
      self.width,
      (p, p),
      strides=(p, p),
      padding='VALID',
      dtype=self.dtype,
      name='embedding',
    )(x.astype(self.dtype))
    n, h, w, d = x.shape
    x = jnp.reshape(x, (n, h * w, d))
    if self.pool == 'token':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], 1)
    x = Encoder(
      self.depth,
      self.num_heads,
      self.mlp_dim,
      drop_path_rate=self.drop_path_rate,
      dtype=self.dtype,
      name='Transformer',
    )(x, train)
    return x[:, 0] if self.pool == 'token' else jnp.mean(x, axis=1)
