"""FixMatch's fixed-threshold pseudo-labels, the 'fixed' policy.

The other policies (FlexMatch, FreeMatch, SoftMatch) and the interface they
share are in policies.py; all give hard labels y_hat and weights m in [0, 1].
"""

import jax
import jax.numpy as jnp


def fixed_threshold(probs: jax.Array, threshold: float):
  """FixMatch: y_hat = argmax p_w, m = [max p_w >= tau]. Returns (y_hat, m)."""
  probs = jax.lax.stop_gradient(probs)
  return jnp.argmax(probs, axis=-1), (
    jnp.max(probs, axis=-1) >= threshold
  ).astype(jnp.float32)
