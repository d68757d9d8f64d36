"""Backbone + linear head classifiers with parameters in two subtrees.

`params = {'backbone': ..., 'head': {'kernel', 'bias'}}`: LayerMatch trains the
two subtrees differently, so they are kept apart by name.
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from layermatch_jax.models.resnet import ResNet
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
  # Small networks for tests, demos and CPU budgets.
  'wrn10_1': (WideResNet, dict(depth=10, widen_factor=1)),
  'wrn16_1': (WideResNet, dict(depth=16, widen_factor=1)),
  'wrn16_2': (WideResNet, dict(depth=16, widen_factor=2)),
  'resnet_tiny': (ResNet, dict(stage_sizes=(1, 1), width=8)),
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
  return Classifier(backbone=cls(**kwargs), num_classes=num_classes)


__all__ = ['BACKBONES', 'Classifier', 'ResNet', 'WideResNet', 'create_model']
