"""Strong view: flip + crop, RandAugment and Cutout, as in USB's FixMatch.

We follow USB (microsoft/Semi-supervised-learning,
semilearn/datasets/augmentation/randaugment.py), whose op list and ranges are
those of the FixMatch paper's RandAugment table. Each of `num_ops` slots picks
one of the 14 ops uniformly (with replacement) and a magnitude uniformly in its
range (no global magnitude M):

  op            magnitude range         meaning
  AutoContrast  -                       per-channel stretch to [0, 1]
  Brightness    [0.05, 0.95]            blend factor with black
  Color         [0.05, 0.95]            blend factor with grey (saturation)
  Contrast      [0.05, 0.95]            blend factor with the mean grey
  Equalize      -                       per-channel histogram equalisation
  Identity      -
  Posterize     bits = floor([4, 8])    i.e. 4..7 bits, as USB's int(v)
  Rotate        [-30, 30] degrees       counter-clockwise, about the centre
  Sharpness     [0.05, 0.95]            blend factor with the smoothed image
  ShearX/Y      [-0.3, 0.3]             about the top-left corner, like USB
  Solarize      threshold [0, 1]        USB: PIL threshold in [0, 256]
  TranslateX/Y  [-0.3, 0.3]             share of the width / height

The blend factors only reach 0.95, so these four ops only weaken the image;
that is USB's (and the FixMatch table's) choice, kept as is.

Cutout (after the ops, always applied): a square of side u * cutout_fraction *
width, u ~ U[0, 1), centred at a uniform point, clipped to the image, filled
with grey 0.5. USB fills with (125, 123, 114) / 255 (about the CIFAR mean);
0.5 is the same idea without dataset statistics.

Geometric ops fill uncovered pixels with grey 0.5 (`fill`). USB leaves PIL's
default there (black); FixMatch ports commonly use grey 128, which after
normalisation is close to zero, like Cutout's fill.

Under `jax.vmap` the op choice is batched, so `lax.switch` evaluates every
branch and selects; to keep that cheap the five geometric ops share a single
resampling (they only differ in their affine matrix).
"""

import jax
import jax.numpy as jnp
import numpy as np

from layermatch_jax.augment import ops
from layermatch_jax.augment import weak

# (name, low, high): magnitude = low + (high - low) * u, u ~ U[0, 1).
OPS = (
  ('AutoContrast', 0.0, 1.0),
  ('Brightness', 0.05, 0.95),
  ('Color', 0.05, 0.95),
  ('Contrast', 0.05, 0.95),
  ('Equalize', 0.0, 1.0),
  ('Identity', 0.0, 1.0),
  ('Posterize', 4.0, 8.0),
  ('Rotate', -30.0, 30.0),
  ('Sharpness', 0.05, 0.95),
  ('ShearX', -0.3, 0.3),
  ('ShearY', -0.3, 0.3),
  ('Solarize', 0.0, 1.0),
  ('TranslateX', -0.3, 0.3),
  ('TranslateY', -0.3, 0.3),
)
OP_NAMES = tuple(name for name, _, _ in OPS)
_LOW = np.array([low for _, low, _ in OPS], np.float32)
_HIGH = np.array([high for _, _, high in OPS], np.float32)
_GEOMETRIC = ('Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY')


def _pixel_branches(fill):
  """switch branches (image, magnitude, matrix) -> image; the last one warps."""
  return {
    'AutoContrast': lambda x, m, a: ops.autocontrast(x),
    'Brightness': lambda x, m, a: ops.brightness(x, m),
    'Color': lambda x, m, a: ops.color(x, m),
    'Contrast': lambda x, m, a: ops.contrast(x, m),
    'Equalize': lambda x, m, a: ops.equalize(x),
    'Identity': lambda x, m, a: x,
    'Posterize': lambda x, m, a: ops.posterize(
      x, jnp.floor(m).astype(jnp.int32)
    ),
    'Sharpness': lambda x, m, a: ops.sharpness(x, m),
    'Solarize': lambda x, m, a: ops.solarize(x, m),
    'Affine': lambda x, m, a: ops.affine(x, a, fill),
  }


_BRANCH_NAMES = tuple(_pixel_branches(0.5))
# Op index -> switch branch index; all geometric ops go to the shared warp.
_BRANCH_OF_OP = np.array(
  [
    _BRANCH_NAMES.index('Affine' if name in _GEOMETRIC else name)
    for name in OP_NAMES
  ],
  np.int32,
)


def _op_matrix(index, magnitude, height, width):
  """Affine matrix of op `index` at `magnitude` (identity for non-geometric ops)."""
  eye = jnp.asarray(ops.IDENTITY_MATRIX, jnp.float32)
  by_name = {
    'Rotate': ops.rotate_matrix(magnitude, height, width),
    'ShearX': ops.shear_x_matrix(magnitude),
    'ShearY': ops.shear_y_matrix(magnitude),
    'TranslateX': ops.translate_matrix(magnitude * width, 0.0),
    'TranslateY': ops.translate_matrix(0.0, magnitude * height),
  }
  # Scalars only: building all 14 and picking one costs nothing.
  matrices = jnp.stack([by_name.get(name, eye) for name in OP_NAMES])
  return matrices[index]


def apply_op(image, index, level, fill=0.5):
  """Applies op OP_NAMES[index] at magnitude low + (high - low) * level.

  Args:
    image: float [H, W, C] in [0, 1].
    index: int scalar in [0, len(OPS)).
    level: float scalar in [0, 1].
    fill: static grey level for pixels uncovered by geometric ops.
  """
  h, w, _ = image.shape
  index = jnp.asarray(index, jnp.int32)
  magnitude = jnp.asarray(_LOW)[index] + (
    jnp.asarray(_HIGH - _LOW)[index] * jnp.asarray(level, jnp.float32)
  )
  matrix = _op_matrix(index, magnitude, h, w)
  branches = tuple(_pixel_branches(fill).values())
  return jax.lax.switch(
    jnp.asarray(_BRANCH_OF_OP)[index], branches, image, magnitude, matrix
  )


def rand_augment(key, image, num_ops=3, fill=0.5):
  """`num_ops` ops drawn uniformly with replacement, random magnitudes (USB)."""
  for key_op in jax.random.split(key, num_ops):
    key_index, key_level = jax.random.split(key_op)
    index = jax.random.randint(key_index, (), 0, len(OPS))
    level = jax.random.uniform(key_level, ())
    image = apply_op(image, index, level, fill)
  return image


def random_cutout(key, image, cutout_fraction=0.5, fill=0.5):
  """Cutout of side U[0, cutout_fraction) * width at a uniform centre (USB)."""
  h, w, _ = image.shape
  key_size, key_y, key_x = jax.random.split(key, 3)
  size = jax.random.uniform(key_size, ()) * cutout_fraction * w
  center_y = jax.random.uniform(key_y, ()) * h
  center_x = jax.random.uniform(key_x, ()) * w
  return ops.cutout(image, center_y, center_x, size, fill)


def strong_augment(
  key,
  image,
  *,
  num_ops=3,
  cutout_fraction=0.5,
  pad_fraction=0.125,
  fill=0.5,
  flip=True,
):
  """Flip + pad-crop, RandAugment with `num_ops` ops, then Cutout.

  Args:
    key: PRNG key for this image.
    image: float [H, W, C] in [0, 1], C = 1 or 3.
    num_ops: static; RandAugment ops per image.
    cutout_fraction: static; largest Cutout side as a share of the width
      (0 disables Cutout).
    pad_fraction: static; as in weak_augment.
    fill: static; grey level for geometric ops' uncovered pixels and Cutout.
    flip: static; as in weak_augment.

  Returns:
    The strong view, same shape and dtype, values in [0, 1].
  """
  key_weak, key_ra, key_cut = jax.random.split(key, 3)
  image = weak.weak_augment(
    key_weak, image, pad_fraction=pad_fraction, flip=flip
  )
  if num_ops > 0:
    image = rand_augment(key_ra, image, num_ops, fill)
  if cutout_fraction > 0:
    image = random_cutout(key_cut, image, cutout_fraction, fill)
  return image
