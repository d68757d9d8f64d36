"""Wide ResNet backbones as used in the SSL literature (FixMatch, USB).

Pre-activation blocks (BN -> LeakyReLU(0.1) -> conv), BatchNorm momentum 0.999 and
epsilon 1e-3, Kaiming fan-out convolutions. The backbone ends with BN, LeakyReLU
and global average pooling: its output is the feature z the head and
Avg-Clustering see.
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from layermatch_jax.models import conv as conv_lib

# Kaiming normal with fan-out (He et al.), the init of the reference WRNs.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def leaky_relu(x):
  return nn.leaky_relu(x, negative_slope=0.1)


class WideBlock(nn.Module):
  """Pre-activation residual block with two 3x3 convolutions."""

  features: int
  strides: int
  activate_before_residual: bool
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x):
    needs_projection = x.shape[-1] != self.features or self.strides != 1
    y = leaky_relu(self.norm(name='bn1')(x))
    # The first block of the network also feeds the activated input to the
    # shortcut (FixMatch's `activate_before_residual`).
    if needs_projection and self.activate_before_residual:
      x = y
    shortcut = x
    if needs_projection:
      shortcut = self.conv(
        self.features, (1, 1), self.strides, name='shortcut'
      )(x)
    y = self.conv(self.features, (3, 3), self.strides, name='conv1')(y)
    y = leaky_relu(self.norm(name='bn2')(y))
    y = self.conv(self.features, (3, 3), 1, name='conv2')(y)
    return shortcut + y


class WideResNet(nn.Module):
  """WRN-d-k backbone: `len(group_strides)` groups of (d - 4) / 6 blocks.

  WRN-28-2 / WRN-28-8 have three groups (16k, 32k, 64k channels). The 96 px
  STL-10 variant adds a fourth group (128k channels, stride 2).
  """

  depth: int = 28
  widen_factor: int = 2
  group_strides: Sequence[int] = (1, 2, 2)
  bn_momentum: float = 0.999
  bn_epsilon: float = 1e-3
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    if (self.depth - 4) % 6:
      raise ValueError(f'WRN depth must be 6n+4, got {self.depth}')
    blocks_per_group = (self.depth - 4) // 6
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      axis_name=self.axis_name if train else None,
      dtype=self.dtype,
    )
    conv = functools.partial(
      nn.Conv,
      use_bias=False,
      padding='SAME',
      kernel_init=conv_init,
      dtype=self.dtype,
      # XLA:CPU's weight gradient is slow; models/conv.py works around it.
      conv_general_dilated=conv_lib.for_backend(),
    )

    x = conv(16, (3, 3), 1, name='stem')(x.astype(self.dtype))
    for g, stride in enumerate(self.group_strides):
      width = 16 * self.widen_factor * 2**g
      for b in range(blocks_per_group):
        x = WideBlock(
          width,
          stride if b == 0 else 1,
          activate_before_residual=(g == 0 and b == 0),
          norm=norm,
          conv=conv,
          name=f'group{g}_block{b}',
        )(x)
    x = leaky_relu(norm(name='bn_final')(x))
    return jnp.mean(x, axis=(1, 2))
