"""Avg-Clustering: EMA class centres in feature space and the loss pulling to them.

This is the project's reading of LayerMatch's Avg-Clustering (DESIGN.md section 1):
centres C_k are exponential moving averages of the mean L2-normalised feature of
class k (labeled samples with their label, confident unlabeled weak views with
their pseudo-label); the loss is a cross-entropy over cosine similarities to the
centres, so only the backbone receives its gradient.
"""

from typing import Optional

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class ClusterState:
  """Avg-Clustering class centres C (K x D, float32) and their update counts."""

  centers: jax.Array
  counts: jax.Array  # int32 [K]: EMA updates each centre has had (0 = never).

  @classmethod
  def create(cls, num_classes: int, feature_dim: int) -> 'ClusterState':
    return cls(
      centers=jnp.zeros((num_classes, feature_dim), jnp.float32),
      counts=jnp.zeros((num_classes,), jnp.int32),
    )


def l2_normalize(x, axis=-1, eps=1e-12):
  return x * jax.lax.rsqrt(
    jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps)
  )


def class_feature_sums(
  features, labels, weights, num_classes: int, axis_name: Optional[str] = None
):
  """Sums of normalised features and sample weights per class, over all devices.

  Sums rather than means travel between devices, so the result is the same for
  any split of the global batch.
  """
  onehot = (
    jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * weights[:, None]
  )
  sums = onehot.T @ l2_normalize(jax.lax.stop_gradient(features))
  counts = jnp.sum(onehot, axis=0)
  if axis_name is not None:
    sums, counts = jax.lax.psum((sums, counts), axis_name)
  return sums, counts


def update_centers(
  cluster: ClusterState, sums, counts, momentum: float
) -> ClusterState:
  """C_k <- beta C_k + (1 - beta) mean_k for classes present; first update copies."""
  present = counts > 0
  # counts are weight sums (SoftMatch's m_i < 1 too): the weighted mean divides
  # by them, whatever their size; absent classes divide by 1 and are not used.
  means = sums / jnp.where(present, counts, 1.0)[:, None]
  ema = momentum * cluster.centers + (1.0 - momentum) * means
  new = jnp.where((cluster.counts > 0)[:, None], ema, means)
  return ClusterState(
    centers=jnp.where(present[:, None], new, cluster.centers),
    counts=cluster.counts + present.astype(jnp.int32),
  )


def cluster_loss(
  features, cluster: ClusterState, pseudo_labels, mask, temperature: float
):
  """L_c = mean_i m_i CE(softmax(<z_i, C> / T), y_hat_i) over existing centres.

  Centres never updated are left out of the softmax, samples whose pseudo-class
  has no centre yet are left out of the mean's numerator, and L_c is 0 until at
  least two centres exist (a softmax over one class has no gradient to give).
  """
  valid = cluster.counts > 0
  centers = l2_normalize(jax.lax.stop_gradient(cluster.centers))
  logits = l2_normalize(features) @ centers.T / temperature
  logits = jnp.where(valid[None, :], logits, -1e9)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, pseudo_labels)
  weight = mask * valid[pseudo_labels] * (jnp.sum(valid) >= 2)
  return jnp.mean(weight * ce)


def nearest_centre(features, cluster: ClusterState):
  """(class of the nearest updated centre by cosine [N], whether >= 2 centres exist).

  With fewer than two centres "nearest" says nothing, so callers treat it as no vote.
  """
  valid = cluster.counts > 0
  sims = l2_normalize(features) @ l2_normalize(cluster.centers).T
  labels = jnp.argmax(jnp.where(valid[None, :], sims, -jnp.inf), axis=1)
  return labels, jnp.sum(valid) >= 2
