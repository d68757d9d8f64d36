"""Grad-ReLU: the pseudo-label loss must not (or only partly) move the head.

W~ = alpha W + (1 - alpha) stop_gradient(W) has the value of W and passes
alpha times the gradient, so one backward pass gives the head
dL_s/dW + alpha lambda_u dL_u/dW while the backbone's gradient still flows
through the head's current weights.
"""

from typing import Mapping

import jax


def scale_gradient(x, scale: float):
  """Identity in value; multiplies the gradient flowing into `x` by `scale`."""
  if scale == 1.0:
    return x
  if scale == 0.0:
    return jax.lax.stop_gradient(x)
  return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def mask_head(head_params: Mapping[str, jax.Array], scales: Mapping[str, float]):
  """Applies a gradient scale per head leaf ('kernel', 'bias')."""
  return {name: scale_gradient(w, scales[name]) for name, w in head_params.items()}
