"""On-device augmentation in JAX: weak (flip + crop) and strong (RandAugment) views.

All functions work on one float32 [H, W, C] image in [0, 1] and one PRNG key,
so the caller can derive per-example keys (e.g. from the global example index)
and `jax.vmap` them; `augment_batch` does the split-and-vmap for a batch.
"""

import functools

import jax

from layermatch_jax.augment import ops
from layermatch_jax.augment.randaugment import apply_op
from layermatch_jax.augment.randaugment import OP_NAMES
from layermatch_jax.augment.randaugment import rand_augment
from layermatch_jax.augment.randaugment import random_cutout
from layermatch_jax.augment.randaugment import strong_augment
from layermatch_jax.augment.weak import random_flip
from layermatch_jax.augment.weak import random_pad_crop
from layermatch_jax.augment.weak import weak_augment

__all__ = [
  'apply_op',
  'augment_batch',
  'OP_NAMES',
  'ops',
  'rand_augment',
  'random_cutout',
  'random_flip',
  'random_pad_crop',
  'strong_augment',
  'weak_augment',
]


def augment_batch(fn, key, images, **kwargs):
  """Applies per-image `fn(key, image, **kwargs)` to [N, H, W, C] images.

  Splits `key` into N per-image keys. Results depend on N; when they must not
  (e.g. across device counts), derive keys per example and vmap `fn` yourself.
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(functools.partial(fn, **kwargs))(keys, images)
