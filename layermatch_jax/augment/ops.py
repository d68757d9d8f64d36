"""Single image ops on float32 [H, W, C] images in [0, 1], C = 1 or 3.

Each op mirrors its PIL counterpart (`PIL.ImageEnhance`, `PIL.ImageOps`,
`Image.transform` / `Image.rotate`) on the [0, 1] scale, so RandAugment ranges
written for PIL carry over unchanged. Unlike PIL there is no 8-bit rounding
after each op, except where the op is defined on 8-bit levels (posterize,
equalize). Magnitudes may be traced values: every op is jit- and vmap-able.

Geometric ops resample like PIL's default (nearest neighbour, pixel centres at
i + 0.5) and fill uncovered pixels with `fill` (a grey level in [0, 1]).
"""

import jax
import jax.numpy as jnp

# ITU-R 601-2 luma, as PIL's convert('L').
_LUMA = (0.299, 0.587, 0.114)


def _clip(x):
  return jnp.clip(x, 0.0, 1.0)


def _levels(image):
  """The 8-bit level (0..255, int32) nearest to each value."""
  return jnp.round(_clip(image) * 255.0).astype(jnp.int32)


def grayscale(image):
  """[H, W, 1] luma of `image` (the image itself when it has one channel)."""
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[..., None]


def blend(degenerate, image, factor):
  """PIL's Image.blend: factor 0 gives `degenerate`, 1 the image, >1 extrapolates."""
  factor = jnp.asarray(factor, image.dtype)
  return _clip(degenerate + factor * (image - degenerate))


# --- colour ops ---------------------------------------------------------------


def identity(image):
  return image


def brightness(image, factor):
  """ImageEnhance.Brightness: blend with black."""
  return blend(jnp.zeros_like(image), image, factor)


def color(image, factor):
  """ImageEnhance.Color (saturation): blend with the image's own grey version."""
  return blend(jnp.broadcast_to(grayscale(image), image.shape), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: blend with a flat image at the mean luma."""
  # PIL rounds the mean to an 8-bit level; on the float scale we keep it exact.
  mean = jnp.mean(grayscale(image))
  return blend(jnp.full_like(image, mean), image, factor)


def smooth(image):
  """PIL's ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13).

  As in PIL, the one-pixel border keeps its original values.
  """
  h, w, _ = image.shape
  # 3x3 sums by shifted slices of an edge-padded copy, then the border put
  # back by a mask: in XLA this fuses better than a scatter or a conv.
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode='edge')
  total = 4.0 * image
  for dy in range(3):
    for dx in range(3):
      total = total + padded[dy : dy + h, dx : dx + w]
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inner = (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)
  return jnp.where(inner[..., None], total / 13.0, image)


def sharpness(image, factor):
  """ImageEnhance.Sharpness: blend with the smoothed image (factor < 1 blurs)."""
  return blend(smooth(image), image, factor)


def autocontrast(image):
  """ImageOps.autocontrast (cutoff 0): stretch each channel to [0, 1].

  A flat channel is left as it is, like PIL.
  """
  lo = jnp.min(image, axis=(0, 1), keepdims=True)
  hi = jnp.max(image, axis=(0, 1), keepdims=True)
  flat = hi <= lo
  scale = jnp.where(flat, 1.0, 1.0 / jnp.where(flat, 1.0, hi - lo))
  offset = jnp.where(flat, 0.0, lo)
  return _clip((image - offset) * scale)


def _equalize_levels(levels):
  """PIL's equalize for one channel of 8-bit levels [H, W] (int32)."""
  hist = jnp.bincount(levels.ravel(), length=256)
  # PIL's step ignores the count of the highest level present.
  top = hist[jnp.max(levels)]
  step = (levels.size - top) // 255
  below = jnp.cumsum(hist) - hist  # pixels strictly below each level
  lut = (step // 2 + below) // jnp.maximum(step, 1)
  lut = jnp.clip(lut, 0, 255)
  # step 0 (one level, or almost all pixels at the top) means no change in PIL.
  return jnp.where(step > 0, lut[levels], levels)


def equalize(image):
  """ImageOps.equalize, per channel, on the image's 8-bit levels."""
  levels = _levels(image)
  out = jax.vmap(_equalize_levels, in_axes=-1, out_axes=-1)(levels)
  return out.astype(image.dtype) / 255.0


def posterize(image, bits):
  """ImageOps.posterize: keep the top `bits` bits (1..8) of each 8-bit level."""
  bits = jnp.asarray(bits, jnp.int32)
  shift = jnp.clip(8 - bits, 0, 7)
  levels = jnp.left_shift(jnp.right_shift(_levels(image), shift), shift)
  # 8 bits is exact identity, also for values between 8-bit levels.
  return jnp.where(bits >= 8, image, levels.astype(image.dtype) / 255.0)


def solarize(image, threshold):
  """ImageOps.solarize: invert values strictly above `threshold` (in [0, 1]).

  threshold 1 is the identity. PIL's integer threshold T (invert levels >= T)
  is threshold = (T - 0.5) / 255 here.
  """
  threshold = jnp.asarray(threshold, image.dtype)
  return jnp.where(image > threshold, 1.0 - image, image)


# --- geometric ops ------------------------------------------------------------


def affine(image, matrix, fill=0.5):
  """PIL's Image.transform(size, Image.AFFINE, matrix), nearest neighbour.

  `matrix` = (a, b, c, d, e, f) maps each output pixel centre (x, y) (pixel
  centres at i + 0.5) to the input point (a x + b y + c, d x + e y + f); the
  input pixel containing that point is copied, points outside get `fill`.
  """
  h, w, _ = image.shape
  a, b, c, d, e, f = jnp.unstack(jnp.asarray(matrix, jnp.float32))
  ys, xs = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32) + 0.5,
    jnp.arange(w, dtype=jnp.float32) + 0.5,
    indexing='ij',
  )
  col = jnp.floor(a * xs + b * ys + c).astype(jnp.int32)
  row = jnp.floor(d * xs + e * ys + f).astype(jnp.int32)
  inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
  out = image[jnp.clip(row, 0, h - 1), jnp.clip(col, 0, w - 1)]
  return jnp.where(inside[..., None], out, jnp.asarray(fill, image.dtype))


def rotate_matrix(degrees, height, width):
  """Affine matrix of PIL's Image.rotate: counter-clockwise about the centre."""
  theta = -jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  cx, cy = width / 2.0, height / 2.0
  # Output -> input: rotate by -degrees about (cx, cy).
  return jnp.stack(
    [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]
  )


def shear_x_matrix(factor):
  """USB/FixMatch ShearX: x_in = x + factor * y (about the top-left corner)."""
  factor = jnp.asarray(factor, jnp.float32)
  return jnp.stack([1.0, factor, 0.0, 0.0, 1.0, 0.0])


def shear_y_matrix(factor):
  """USB/FixMatch ShearY: y_in = factor * x + y (about the top-left corner)."""
  factor = jnp.asarray(factor, jnp.float32)
  return jnp.stack([1.0, 0.0, 0.0, factor, 1.0, 0.0])


def translate_matrix(dx, dy):
  """x_in = x + dx, y_in = y + dy: positive values move the content left/up."""
  dx = jnp.asarray(dx, jnp.float32)
  dy = jnp.asarray(dy, jnp.float32)
  return jnp.stack([1.0, 0.0, dx, 0.0, 1.0, dy])


IDENTITY_MATRIX = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def rotate(image, degrees, fill=0.5):
  """Image.rotate(degrees): counter-clockwise, same size, nearest neighbour."""
  h, w, _ = image.shape
  return affine(image, rotate_matrix(degrees, h, w), fill)


def shear_x(image, factor, fill=0.5):
  return affine(image, shear_x_matrix(factor), fill)


def shear_y(image, factor, fill=0.5):
  return affine(image, shear_y_matrix(factor), fill)


def translate_x(image, pixels, fill=0.5):
  """Shifts the content left by `pixels` (PIL's affine offset c; may be fractional)."""
  return affine(image, translate_matrix(pixels, 0.0), fill)


def translate_y(image, pixels, fill=0.5):
  """Shifts the content up by `pixels`."""
  return affine(image, translate_matrix(0.0, pixels), fill)


# --- occlusion ------------------------------------------------------------------


def cutout(image, center_y, center_x, size, fill=0.5):
  """Fills a square of side `size` pixels with `fill`, as USB's CutoutAbs.

  The square's top-left corner is floor(max(0, centre - size / 2)) on each axis;
  it covers rows/columns [corner, corner + size), clipped to the image (USB's
  PIL rectangle also paints the end row/column; we do not).
  """
  h, w, _ = image.shape
  size = jnp.asarray(size, jnp.float32)
  y0 = jnp.floor(jnp.maximum(0.0, center_y - size / 2.0))
  x0 = jnp.floor(jnp.maximum(0.0, center_x - size / 2.0))
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  box = (rows >= y0) & (rows < y0 + size) & (cols >= x0) & (cols < x0 + size)
  return jnp.where(box[..., None], jnp.asarray(fill, image.dtype), image)
