"""ResNet backbones (v1.5, bottleneck stride on the 3x3 conv) for ImageNet-100."""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from layermatch_jax.models import conv as conv_lib

conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class Bottleneck(nn.Module):
  features: int
  strides: int
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x):
    shortcut = x
    y = nn.relu(
      self.norm(name='bn1')(self.conv(self.features, (1, 1), name='conv1')(x))
    )
    y = nn.relu(
      self.norm(name='bn2')(
        self.conv(self.features, (3, 3), self.strides, name='conv2')(y)
      )
    )
    y = self.conv(self.features * 4, (1, 1), name='conv3')(y)
    # Zero-init of the last BN scale makes each block start as the identity.
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(y)
    if shortcut.shape != y.shape:
      shortcut = self.norm(name='shortcut_bn')(
        self.conv(self.features * 4, (1, 1), self.strides, name='shortcut')(
          shortcut
        )
      )
    return nn.relu(shortcut + y)


class ResNet(nn.Module):
  """Bottleneck ResNet backbone; returns globally pooled features."""

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
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
    x = conv(self.width, (7, 7), 2, name='stem')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn_stem')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
    for s, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        x = Bottleneck(
          self.width * 2**s,
          2 if (s > 0 and b == 0) else 1,
          norm=norm,
          conv=conv,
          name=f'stage{s}_block{b}',
        )(x)
    return jnp.mean(x, axis=(1, 2))
