"""Grad-ReLU: the pseudo-label loss must not (or only partly) move the head.

W~ = alpha W + (1 - alpha) stop_gradient(W) has the value of W and passes
alpha times the gradient, so one backward pass gives the head
dL_s/dW + alpha lambda_u dL_u/dW while the backbone's gradient still flows
through the head's current weights.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

# How much pseudo-label gradient the head gets (layermatch.head_grad_rule):
#   static     alpha = layermatch.head_grad_scale for every sample (the paper);
#   consensus  alpha_i = 1 for a confident sample whose pseudo-label (from the
#              head) and nearest Avg-Clustering centre (from the features) agree,
#              the static alpha elsewhere: two independent votes for the label;
#   warmup     alpha(t) = alpha + (1 - alpha) min(1, t / T) for every sample,
#              T = layermatch.head_grad_warmup_fraction of training: Grad-ReLU
#              early, while pseudo-labels are poor, FixMatch's head later (a
#              baseline for consensus, whose agreement also rises to 1).
HEAD_GRAD_RULES = ('static', 'consensus', 'warmup')


def warmup_share(step, warmup_steps: int):
  """The share of the pseudo-label gradient the warm-up passes at `step`."""
  return jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)


def scale_gradient(x, scale: float):
  """Identity in value; multiplies the gradient flowing into `x` by `scale`."""
  if scale == 1.0:
    return x
  if scale == 0.0:
    return jax.lax.stop_gradient(x)
  return scale * x + (1.0 - scale) * jax.lax.stop_gradient(x)


def mask_head(
  head_params: Mapping[str, jax.Array], scales: Mapping[str, float]
):
  """Applies a gradient scale per head leaf ('kernel', 'bias')."""
  return {
    name: scale_gradient(w, scales[name]) for name, w in head_params.items()
  }


def mix_per_sample(full_logits, masked_logits, share):
  """Logits whose head gradient is `share_i` full and `1 - share_i` masked.

  full_logits use the head's W, masked_logits its W~ (mask_head); both carry the
  same value, so the result does too, and the backbone's gradient is the same
  through either: only the head's gradient from sample i changes, to
  share_i dL_i/dW + (1 - share_i) alpha dL_i/dW. `share` is not differentiated.
  """
  share = jax.lax.stop_gradient(share)[:, None]
  return share * full_logits + (1.0 - share) * masked_logits


def consensus_share(pseudo_labels, centre_labels, has_centres):
  """1.0 where the pseudo-label equals the nearest centre's class, else 0.0."""
  return ((pseudo_labels == centre_labels) & has_centres).astype(jnp.float32)
