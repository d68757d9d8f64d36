"""The parts of a pseudo-label learner that LayerMatch adds or changes."""

from layermatch_jax.algorithms import (
  avg_clustering,
  grad_relu,
  policies,
  presets,
  pseudo_label,
)

__all__ = ['avg_clustering', 'grad_relu', 'policies', 'presets', 'pseudo_label']
