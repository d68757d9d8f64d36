"""From a uint8 host batch to the normalised views the step trains on.

x_l = weak(labeled), x_w = weak(unlabeled), x_s = strong(unlabeled). Each image
gets its own key, folded from the step and the image's index in the *global*
batch, so the views do not depend on how many devices share the batch.
"""

import jax
import jax.numpy as jnp

from layermatch_jax import augment

# Distinct streams so the weak and strong views of one image are independent.
_LABELED, _WEAK, _STRONG = 0, 1, 2


def example_keys(base_key, step, stream: int, local_size: int, axis_name):
  """One key per local example, from its index in the global batch."""
  offset = (
    0 if axis_name is None else jax.lax.axis_index(axis_name) * local_size
  )
  key = jax.random.fold_in(jax.random.fold_in(base_key, step), stream)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(
    offset + jnp.arange(local_size)
  )


def normalize(images, mean, std):
  """[0, 1] floats -> per-channel standardised floats."""
  return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(
    std, jnp.float32
  )


def to_unit_float(images):
  return images.astype(jnp.float32) / 255.0


def make_views(rng, step, batch, sc):
  """rng: the state's raw key data; sc: the step's StepConfig."""
  base_key = jax.random.wrap_key_data(rng)
  axis = sc.axis_name

  def augment_stream(images, stream, fn, **kwargs):
    keys = example_keys(base_key, step, stream, images.shape[0], axis)
    out = jax.vmap(lambda k, x: fn(k, x, **kwargs))(keys, to_unit_float(images))
    return normalize(out, sc.mean, sc.std)

  views = dict(
    x_l=augment_stream(
      batch['labeled_image'],
      _LABELED,
      augment.weak_augment,
      pad_fraction=sc.pad_fraction,
      flip=sc.flip,
    ),
    y_l=batch['labeled_label'],
  )
  if sc.use_unlabeled:
    unlabeled = batch['unlabeled_image']
    views['x_w'] = augment_stream(
      unlabeled,
      _WEAK,
      augment.weak_augment,
      pad_fraction=sc.pad_fraction,
      flip=sc.flip,
    )
    views['x_s'] = augment_stream(
      unlabeled,
      _STRONG,
      augment.strong_augment,
      num_ops=sc.num_ops,
      cutout_fraction=sc.cutout_fraction,
      pad_fraction=sc.pad_fraction,
      flip=sc.flip,
    )
    if 'unlabeled_label' in batch:
      views['y_u'] = batch['unlabeled_label']
    if (
      'unlabeled_index' in batch
    ):  # Pool indices, for FlexMatch's per-image record.
      views['idx_u'] = batch['unlabeled_index']
  return views
