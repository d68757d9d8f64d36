"""Backbone + linear head classifiers with parameters in two subtrees.

`params = {'backbone': ..., 'head': {'kernel', 'bias'}}`: LayerMatch trains the
two subtrees differently, so they are kept apart by name.
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from layermatch_jax.models.resnet import ResNet
from layermatch_jax.models.vit import ViT
from layermatch_jax.parallel import AXIS
from layermatch_jax.models.wrn import WideResNet


class Classifier(nn.Module):
  """g_theta (backbone) followed by h_W(z) = W z + b (head)."""

  backbone: nn.Module
  num_classes: int

  def setup(self):
    # Xavier-normal head, as in the reference WRN; float32 logits for the losses.
    self.head = nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.xavier_normal(),
      dtype=jnp.float32,
    )

  def features(self, x, train: bool = True):
    return self.backbone(x, train=train).astype(jnp.float32)

  def classify(self, z):
    return self.head(z)

  def __call__(self, x, train: bool = True):
    """Returns (features, logits)."""
    z = self.features(x, train=train)
    return z, self.classify(z)


def _vit(patch, width, depth, heads, mlp):
  return dict(
    patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_dim=mlp
  )


# name -> (backbone class, kwargs). WRN-37-2 is the STL-10 variant of FixMatch/USB:
# depth-28 blocks in four groups (stem + 32 convs + 3 shortcut convs + head = 37 layers).
BACKBONES = {
  'wrn28_2': (WideResNet, dict(depth=28, widen_factor=2)),
  'wrn28_8': (WideResNet, dict(depth=28, widen_factor=8)),
  'wrn37_2': (
    WideResNet,
    dict(depth=28, widen_factor=2, group_strides=(1, 2, 2, 2)),
  ),
  'resnet50': (ResNet, dict(stage_sizes=(3, 4, 6, 3))),
  # ViTs (models/vit.py), ImageNet sizes (Ti/S/B, patch 16) and USB's
  # vit_small_patch2_32 (S with patch 2, for 32 px inputs).
  'vit_ti16': (ViT, _vit(16, width=192, depth=12, heads=3, mlp=768)),
  'vit_s16': (ViT, _vit(16, width=384, depth=12, heads=6, mlp=1536)),
  'vit_b16': (ViT, _vit(16, width=768, depth=12, heads=12, mlp=3072)),
  'vit_s2_32': (ViT, _vit(2, width=384, depth=12, heads=6, mlp=1536)),
  # Small networks for tests, demos and CPU budgets.
  'wrn10_1': (WideResNet, dict(depth=10, widen_factor=1)),
  'wrn16_1': (WideResNet, dict(depth=16, widen_factor=1)),
  'wrn16_2': (WideResNet, dict(depth=16, widen_factor=2)),
  'resnet_tiny': (ResNet, dict(stage_sizes=(1, 1), width=8)),
  'vit_tiny_test': (ViT, _vit(4, width=32, depth=2, heads=2, mlp=64)),
}

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def create_model(
  model_config, num_classes: int, axis_name: Optional[str] = AXIS
) -> Classifier:
  """Builds the classifier named by `model_config.name`.

  Raises ValueError naming the valid choices for an unknown name or dtype.
  """
  if model_config.name not in BACKBONES:
    raise ValueError(
      f'model.name={model_config.name!r} is not one of {sorted(BACKBONES)}'
    )
  if model_config.dtype not in DTYPES:
    raise ValueError(
      f'model.dtype={model_config.dtype!r} is not one of {sorted(DTYPES)}'
    )
  cls, kwargs = BACKBONES[model_config.name]
  kwargs = dict(kwargs, axis_name=axis_name, dtype=DTYPES[model_config.dtype])
  if cls is WideResNet:
    # The ResNet keeps its own ImageNet BN defaults.
    kwargs.update(
      bn_momentum=model_config.get('bn_momentum', 0.999),
      bn_epsilon=model_config.get('bn_epsilon', 1e-3),
    )
  if cls is ViT:
    kwargs.update(drop_path_rate=model_config.get('drop_path_rate', 0.0))
  return Classifier(backbone=cls(**kwargs), num_classes=num_classes)


__all__ = [
  'BACKBONES',
  'Classifier',
  'ResNet',
  'ViT',
  'WideResNet',
  'create_model',
]
