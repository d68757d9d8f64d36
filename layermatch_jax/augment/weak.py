"""Weak view: random horizontal flip and reflect-pad random crop (FixMatch/USB).

Per image, pure and jit/vmap-able; the result depends only on the key.
"""

import jax
import jax.numpy as jnp


def pad_size(side, pad_fraction):
  """Padding in pixels for one side: round(pad_fraction * side), ties away from 0."""
  return int(pad_fraction * side + 0.5)


def random_flip(key, image):
  """Mirrors left-right with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


def random_pad_crop(key, image, pad_fraction=0.125):
  """Reflect-pads each side by pad_size() and crops back at a random offset.

  Like torchvision's RandomCrop(size, padding, padding_mode='reflect') that USB
  uses: every offset in [0, 2 * pad] on each axis is equally likely.
  """
  h, w, _ = image.shape
  ph, pw = pad_size(h, pad_fraction), pad_size(w, pad_fraction)
  if ph == 0 and pw == 0:
    return image
  if ph >= h or pw >= w:
    raise ValueError(
      f'pad_fraction={pad_fraction} pads ({ph}, {pw}) pixels, but reflect '
      f'padding needs less than the image size ({h}, {w}).'
    )
  padded = jnp.pad(image, ((ph, ph), (pw, pw), (0, 0)), mode='reflect')
  key_y, key_x = jax.random.split(key)
  dy = jax.random.randint(key_y, (), 0, 2 * ph + 1)
  dx = jax.random.randint(key_x, (), 0, 2 * pw + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def weak_augment(key, image, *, pad_fraction=0.125, flip=True):
  """Flip (p = 1/2), then reflect-pad by round(pad_fraction * side) and crop.

  Args:
    key: PRNG key for this image.
    image: float [H, W, C] in [0, 1].
    pad_fraction: static; padding as a share of each side (0 disables the crop).
    flip: static; False for images whose mirror is another thing (digits, text).

  Returns:
    The weak view, same shape and dtype.
  """
  key_flip, key_crop = jax.random.split(key)
  if flip:
    image = random_flip(key_flip, image)
  return random_pad_crop(key_crop, image, pad_fraction)
