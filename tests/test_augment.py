"""Tests for layermatch_jax.augment: single ops against PIL, weak and strong views."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps
import pytest
from sklearn import datasets

from layermatch_jax import augment
from layermatch_jax.augment import ops
from layermatch_jax.augment import randaugment
from layermatch_jax.augment import weak

GREY128 = 128 / 255.0  # PIL fillcolor 128 on our scale


@functools.lru_cache(maxsize=None)
def _digits_uint8(index=0, height=32, width=32):
  """A digit from sklearn, upscaled and tinted into a colour [H, W, 3] uint8 image."""
  digit = datasets.load_digits().images[index] / 16.0
  small = Image.fromarray((digit * 255).astype(np.uint8))
  big = np.asarray(small.resize((width, height), Image.BILINEAR), np.float32)
  yy, xx = np.mgrid[:height, :width]
  rgb = np.stack(
    [
      big,
      0.6 * big + 80.0 * xx / (width - 1),
      255.0 - 0.7 * big - 60.0 * yy / (height - 1),
    ],
    axis=-1,
  )
  return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _as_float(image_uint8):
  return jnp.asarray(image_uint8, jnp.float32) / 255.0


def _rgb():
  return _digits_uint8(0)


def _gray():
  return _digits_uint8(3)[..., :1]


def _wide():
  return _digits_uint8(5, height=24, width=40)


def _to_pil(image_uint8):
  if image_uint8.shape[-1] == 1:
    return Image.fromarray(image_uint8[..., 0])
  return Image.fromarray(image_uint8)


def _from_pil(pil_image):
  array = np.asarray(pil_image, np.float32)
  return array[..., None] if array.ndim == 2 else array


def _fill(pil_image):
  return (128,) * len(pil_image.getbands())


def _affine_pil(matrix):
  return lambda p: p.transform(p.size, Image.AFFINE, matrix, fillcolor=_fill(p))


# (name, ours, PIL's, kind); MEAN_BOUND[kind] bounds the mean |difference| in
# 8-bit levels.
# Colour ops: PIL rounds or truncates to 8 bits once or twice per op (its
# degenerate image, then the blend), we do not, so each pixel may be off by up
# to ~1-2 levels and the mean by about half a level; mean < 1.0 and max < 2.0
# leave margin (measured: mean <= 0.64, max <= 1.3).
# Ops defined on 8-bit levels (equalize, posterize, solarize) must be exact.
# Geometric ops copy the same source pixel as PIL (nearest, centres at i + .5);
# only points landing exactly on a pixel edge may round differently (float32
# here, double in PIL), each costing at most 255 / (H * W) of the mean
# (measured: 2 such pixels of 1024 at 23 degrees, none elsewhere).
COLOUR, EXACT, GEOMETRIC = 'colour', 'exact', 'geometric'
MEAN_BOUND = {COLOUR: 1.0, EXACT: 0.01, GEOMETRIC: 1.0}
PIL_CASES = [
  (
    'brightness_0.3',
    lambda x: ops.brightness(x, 0.3),
    lambda p: ImageEnhance.Brightness(p).enhance(0.3),
    COLOUR,
  ),
  (
    'brightness_1.6',
    lambda x: ops.brightness(x, 1.6),
    lambda p: ImageEnhance.Brightness(p).enhance(1.6),
    COLOUR,
  ),
  (
    'color_0.2',
    lambda x: ops.color(x, 0.2),
    lambda p: ImageEnhance.Color(p).enhance(0.2),
    COLOUR,
  ),
  (
    'color_1.7',
    lambda x: ops.color(x, 1.7),
    lambda p: ImageEnhance.Color(p).enhance(1.7),
    COLOUR,
  ),
  (
    'contrast_0.4',
    lambda x: ops.contrast(x, 0.4),
    lambda p: ImageEnhance.Contrast(p).enhance(0.4),
    COLOUR,
  ),
  (
    'contrast_1.5',
    lambda x: ops.contrast(x, 1.5),
    lambda p: ImageEnhance.Contrast(p).enhance(1.5),
    COLOUR,
  ),
  (
    'sharpness_0.1',
    lambda x: ops.sharpness(x, 0.1),
    lambda p: ImageEnhance.Sharpness(p).enhance(0.1),
    COLOUR,
  ),
  (
    'sharpness_1.9',
    lambda x: ops.sharpness(x, 1.9),
    lambda p: ImageEnhance.Sharpness(p).enhance(1.9),
    COLOUR,
  ),
  ('autocontrast', ops.autocontrast, ImageOps.autocontrast, COLOUR),
  ('equalize', ops.equalize, ImageOps.equalize, EXACT),
  (
    'posterize_4',
    lambda x: ops.posterize(x, 4),
    lambda p: ImageOps.posterize(p, 4),
    EXACT,
  ),
  (
    'posterize_6',
    lambda x: ops.posterize(x, 6),
    lambda p: ImageOps.posterize(p, 6),
    EXACT,
  ),
  (
    'solarize_128',
    lambda x: ops.solarize(x, 127.5 / 255),
    lambda p: ImageOps.solarize(p, 128),
    EXACT,
  ),
  (
    'solarize_40',
    lambda x: ops.solarize(x, 39.5 / 255),
    lambda p: ImageOps.solarize(p, 40),
    EXACT,
  ),
  (
    'rotate_23',
    lambda x: ops.rotate(x, 23.0, GREY128),
    lambda p: p.rotate(23.0, fillcolor=_fill(p)),
    GEOMETRIC,
  ),
  (
    'rotate_-30',
    lambda x: ops.rotate(x, -30.0, GREY128),
    lambda p: p.rotate(-30.0, fillcolor=_fill(p)),
    GEOMETRIC,
  ),
  (
    'shear_x_0.27',
    lambda x: ops.shear_x(x, 0.27, GREY128),
    _affine_pil((1, 0.27, 0, 0, 1, 0)),
    GEOMETRIC,
  ),
  (
    'shear_y_-0.2',
    lambda x: ops.shear_y(x, -0.2, GREY128),
    _affine_pil((1, 0, 0, -0.2, 1, 0)),
    GEOMETRIC,
  ),
  (
    'translate_x_5.3',
    lambda x: ops.translate_x(x, 5.3, GREY128),
    _affine_pil((1, 0, 5.3, 0, 1, 0)),
    GEOMETRIC,
  ),
  (
    'translate_y_-7.7',
    lambda x: ops.translate_y(x, -7.7, GREY128),
    _affine_pil((1, 0, 0, 0, 1, -7.7)),
    GEOMETRIC,
  ),
]


@pytest.mark.parametrize(
  'make_image', [_rgb, _gray, _wide], ids=['rgb', 'gray', 'wide']
)
@pytest.mark.parametrize(
  'name,ours,theirs,kind', PIL_CASES, ids=[case[0] for case in PIL_CASES]
)
def test_op_agrees_with_pil(name, ours, theirs, kind, make_image):
  del name
  image = make_image()
  got = np.asarray(ours(_as_float(image))) * 255.0
  want = _from_pil(theirs(_to_pil(image)))
  chex.assert_shape(got, want.shape)
  diff = np.abs(got - want)
  assert diff.mean() < MEAN_BOUND[kind]
  if kind == COLOUR:
    assert diff.max() < 2.0
  if kind == GEOMETRIC:
    # Almost every pixel must be the very same one PIL copied.
    assert np.mean(diff.max(axis=-1) > 0.5) < 0.01


# (name, op at a generic magnitude, op at its identity magnitude).
OP_CASES = [
  (
    'brightness',
    lambda x: ops.brightness(x, 0.37),
    lambda x: ops.brightness(x, 1.0),
  ),
  ('color', lambda x: ops.color(x, 0.37), lambda x: ops.color(x, 1.0)),
  ('contrast', lambda x: ops.contrast(x, 1.8), lambda x: ops.contrast(x, 1.0)),
  (
    'sharpness',
    lambda x: ops.sharpness(x, 1.9),
    lambda x: ops.sharpness(x, 1.0),
  ),
  ('posterize', lambda x: ops.posterize(x, 3), lambda x: ops.posterize(x, 8)),
  ('solarize', lambda x: ops.solarize(x, 0.3), lambda x: ops.solarize(x, 1.0)),
  ('rotate', lambda x: ops.rotate(x, 29.0), lambda x: ops.rotate(x, 0.0)),
  ('shear_x', lambda x: ops.shear_x(x, -0.3), lambda x: ops.shear_x(x, 0.0)),
  ('shear_y', lambda x: ops.shear_y(x, 0.3), lambda x: ops.shear_y(x, 0.0)),
  (
    'translate_x',
    lambda x: ops.translate_x(x, 9.6),
    lambda x: ops.translate_x(x, 0.0),
  ),
  (
    'translate_y',
    lambda x: ops.translate_y(x, -9.6),
    lambda x: ops.translate_y(x, 0.0),
  ),
  (
    'cutout',
    lambda x: ops.cutout(x, 10.0, 12.0, 16.0),
    lambda x: ops.cutout(x, 10.0, 12.0, 0.0),
  ),
  ('autocontrast', ops.autocontrast, None),
  ('equalize', ops.equalize, None),
  ('identity', ops.identity, ops.identity),
]


def _off_grid(image_uint8):
  """The image plus sub-level noise, so values are not all on 8-bit levels."""
  noise = np.random.RandomState(0).uniform(-0.4, 0.4, image_uint8.shape)
  return jnp.asarray(np.clip((image_uint8 + noise) / 255.0, 0, 1), jnp.float32)


@pytest.mark.parametrize(
  'make_image', [_rgb, _gray, _wide], ids=['rgb', 'gray', 'wide']
)
@pytest.mark.parametrize(
  'name,op,op_identity', OP_CASES, ids=[case[0] for case in OP_CASES]
)
def test_op_shape_range_identity(name, op, op_identity, make_image):
  del name
  image = _off_grid(make_image())
  out = op(image)
  chex.assert_shape(out, image.shape)
  chex.assert_type(out, jnp.float32)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  if op_identity is not None:
    np.testing.assert_allclose(op_identity(image), image, atol=1e-6)


def test_flat_image_autocontrast_equalize_unchanged():
  flat = jnp.full((8, 8, 3), 0.4, jnp.float32)
  np.testing.assert_allclose(ops.autocontrast(flat), flat)
  np.testing.assert_allclose(ops.equalize(flat), jnp.round(flat * 255) / 255)


def test_cutout_fills_a_clipped_square():
  image = jnp.zeros((20, 30, 3))
  out = np.asarray(ops.cutout(image, 10.0, 15.0, 6.0, fill=0.5))
  assert np.all(out[7:13, 12:18] == 0.5) and np.sum(out[..., 0] == 0.5) == 36
  corner = np.asarray(ops.cutout(image, 1.0, 29.0, 8.0, fill=0.5))
  # The corner clips at 0 first, then spans the full side (as USB): rows 0..7;
  # columns 25..32 are clipped to 25..29.
  assert np.sum(corner[..., 0] == 0.5) == 8 * 5


def _explicit_op(name, image, magnitude, height, width):
  """The ops.* call that randaugment's op `name` must amount to."""
  return {
    'AutoContrast': lambda: ops.autocontrast(image),
    'Brightness': lambda: ops.brightness(image, magnitude),
    'Color': lambda: ops.color(image, magnitude),
    'Contrast': lambda: ops.contrast(image, magnitude),
    'Equalize': lambda: ops.equalize(image),
    'Identity': lambda: image,
    'Posterize': lambda: ops.posterize(image, int(magnitude)),
    'Rotate': lambda: ops.rotate(image, magnitude),
    'Sharpness': lambda: ops.sharpness(image, magnitude),
    'ShearX': lambda: ops.shear_x(image, magnitude),
    'ShearY': lambda: ops.shear_y(image, magnitude),
    'Solarize': lambda: ops.solarize(image, magnitude),
    'TranslateX': lambda: ops.translate_x(image, magnitude * width),
    'TranslateY': lambda: ops.translate_y(image, magnitude * height),
  }[name]()


def test_apply_op_dispatches_to_the_named_op():
  image = _as_float(_wide())
  apply_op = jax.jit(randaugment.apply_op)
  assert len(augment.OP_NAMES) == 14
  for index, (name, low, high) in enumerate(randaugment.OPS):
    for level in (0.0, 0.3, 0.999):
      magnitude = low + (high - low) * level
      got = apply_op(image, index, level)
      want = _explicit_op(name, image, magnitude, *image.shape[:2])
      np.testing.assert_allclose(
        got, want, atol=1e-5, err_msg=f'{name} {level}'
      )


def test_rand_augment_ranges_follow_usb():
  ranges = {name: (low, high) for name, low, high in randaugment.OPS}
  for name in ('Brightness', 'Color', 'Contrast', 'Sharpness'):
    assert ranges[name] == (0.05, 0.95)
  assert ranges['Posterize'] == (4.0, 8.0)
  assert ranges['Rotate'] == (-30.0, 30.0)
  for name in ('ShearX', 'ShearY', 'TranslateX', 'TranslateY'):
    assert ranges[name] == (-0.3, 0.3)
  assert ranges['Solarize'] == (0.0, 1.0)


def _flip_crop_candidates(image, pad_fraction):
  """Every output that a flip + reflect-pad crop could give, and its crop offset
  (dy, dx) from the centred crop."""
  h, w, _ = image.shape
  ph, pw = weak.pad_size(h, pad_fraction), weak.pad_size(w, pad_fraction)
  out, offsets = [], []
  for flipped in (image, image[:, ::-1]):
    padded = np.pad(flipped, ((ph, ph), (pw, pw), (0, 0)), mode='reflect')
    for dy in range(2 * ph + 1):
      for dx in range(2 * pw + 1):
        out.append(padded[dy : dy + h, dx : dx + w])
        offsets.append((dy - ph, dx - pw))
  return np.stack(out), np.array(offsets)


def _is_flip_crop(out, image, pad_fraction=0.125):
  candidates, _ = _flip_crop_candidates(np.asarray(image), pad_fraction)
  return bool(np.any(np.all(candidates == np.asarray(out), axis=(1, 2, 3))))


@pytest.mark.parametrize(
  'make_image', [_rgb, _gray, _wide], ids=['rgb', 'gray', 'wide']
)
def test_weak_only_flips_and_crops(make_image):
  image = _as_float(make_image())
  fn = jax.jit(augment.weak_augment)
  outputs = [np.asarray(fn(jax.random.key(i), image)) for i in range(8)]
  chex.assert_shape(outputs, image.shape)
  chex.assert_type(outputs, np.float32)
  for out in outputs:
    assert _is_flip_crop(out, image)
  assert len({out.tobytes() for out in outputs}) >= 4


def test_weak_without_padding_is_image_or_mirror():
  image = _as_float(_rgb())
  seen = set()
  for i in range(8):
    out = np.asarray(
      augment.weak_augment(jax.random.key(i), image, pad_fraction=0.0)
    )
    is_same = np.array_equal(out, image)
    is_mirror = np.array_equal(out, np.asarray(image)[:, ::-1])
    assert is_same or is_mirror
    seen.add(is_same)
  assert seen == {True, False}


def test_weak_rejects_padding_reflect_cannot_do():
  with pytest.raises(ValueError, match='pad_fraction'):
    augment.weak_augment(
      jax.random.key(0), jnp.zeros((4, 4, 3)), pad_fraction=1.0
    )


@pytest.mark.parametrize(
  'fn', [augment.weak_augment, augment.strong_augment], ids=['weak', 'strong']
)
def test_deterministic_given_key(fn):
  image = _as_float(_rgb())
  fn = jax.jit(fn)
  a = fn(jax.random.key(7), image)
  b = fn(jax.random.key(7), image)
  c = fn(jax.random.key(8), image)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_strong_differs_from_input_and_stays_in_range():
  image = _as_float(_rgb())
  fn = jax.jit(augment.strong_augment)
  outputs = [np.asarray(fn(jax.random.key(i), image)) for i in range(8)]
  chex.assert_shape(outputs, image.shape)
  chex.assert_type(outputs, np.float32)
  for out in outputs:
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, image)
  assert len({out.tobytes() for out in outputs}) == len(outputs)


def test_strong_without_ops_and_cutout_is_weak():
  image = _as_float(_rgb())
  fn = jax.jit(
    functools.partial(augment.strong_augment, num_ops=0, cutout_fraction=0.0)
  )
  for i in range(4):
    out = fn(jax.random.key(i), image)
    assert _is_flip_crop(out, image)


def test_grayscale_is_itu_601_luma():
  image = jnp.asarray([[[1.0, 0.5, 0.0], [0.2, 0.4, 0.6]]])
  # 0.299 r + 0.587 g + 0.114 b, as PIL's convert('L').
  luma = np.array([[[0.299 + 0.2935], [0.0598 + 0.2348 + 0.0684]]])
  np.testing.assert_allclose(ops.grayscale(image), luma, rtol=1e-6)
  # Colour at factor 0 is that grey in every channel; a grey image is its own luma.
  np.testing.assert_allclose(
    ops.color(image, 0.0), np.repeat(luma, 3, -1), rtol=1e-6
  )
  np.testing.assert_array_equal(ops.grayscale(image[..., :1]), image[..., :1])


def test_strong_grayscale_and_options():
  gray = _as_float(_gray())
  keys = jax.random.split(jax.random.key(0), 8)

  def strong(num_ops):
    fn = functools.partial(
      augment.strong_augment,
      num_ops=num_ops,
      cutout_fraction=0.25,
      pad_fraction=0.25,
    )
    return jax.jit(jax.vmap(fn, in_axes=(0, None)))

  # A one-channel image is augmented as its grey RGB copy would be, and that
  # copy stays grey (every op treats equal channels alike; luma sums to 1).
  out_gray = strong(3)(keys, gray)
  out_rgb = np.asarray(strong(3)(keys, jnp.repeat(gray, 3, -1)))
  chex.assert_shape(out_gray, (8, *gray.shape))
  chex.assert_type(out_gray, jnp.float32)
  np.testing.assert_array_equal(
    out_rgb[..., 1:], np.repeat(out_rgb[..., :1], 2, -1)
  )
  np.testing.assert_allclose(out_rgb[..., :1], out_gray, atol=1e-6)
  # The options hold: without ops, each view is a flip and crop of the image
  # padded by 0.25 of its side (offsets up to 8 pixels, some beyond the
  # default's 4), bar a grey Cutout square of side below 0.25 * 32 = 8.
  candidates, offsets = _flip_crop_candidates(np.asarray(gray), 0.25)
  largest_offset = largest_cut = 0
  for out in np.asarray(strong(0)(keys, gray)):
    cut = out == 0.5  # Cutout's grey: no 8-bit level is exactly 0.5.
    rows, cols = np.nonzero(cut[..., 0])
    if rows.size:
      largest_cut = max(largest_cut, np.ptp(rows) + 1, np.ptp(cols) + 1)
    matches = np.all((candidates == out) | cut, axis=(1, 2, 3))
    assert matches.any()
    largest_offset = max(largest_offset, np.abs(offsets[matches]).max(1).min())
  assert 4 < largest_offset <= 8 and 0 < largest_cut <= 8


def test_vmap_in_jit_from_uint8_matches_per_image_calls():
  """The train step's use: uint8 batch, float conversion and per-example keys."""
  images = np.stack([_digits_uint8(i) for i in range(6)])
  base = jax.random.key(3)
  example_ids = jnp.arange(100, 106)  # global example indices

  @jax.jit
  def views(base, example_ids, images):
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(example_ids)
    x = images.astype(jnp.float32) / 255.0
    weak_view = jax.vmap(augment.weak_augment)(keys, x)
    strong_view = jax.vmap(strong)(keys, x)
    return weak_view, strong_view

  # The same strong-view settings on both sides (3 ops = the configs' default).
  strong = functools.partial(
    augment.strong_augment, num_ops=3, cutout_fraction=0.5
  )
  weak_view, strong_view = views(base, example_ids, images)
  weak_one = jax.jit(augment.weak_augment)
  strong_one = jax.jit(strong)
  chex.assert_shape([weak_view, strong_view], images.shape)
  chex.assert_type([weak_view, strong_view], jnp.float32)
  for i, example_id in enumerate(example_ids):
    key = jax.random.fold_in(base, example_id)
    x = _as_float(images[i])
    np.testing.assert_allclose(weak_view[i], weak_one(key, x), atol=1e-6)
    np.testing.assert_allclose(strong_view[i], strong_one(key, x), atol=1e-5)


def test_augment_batch_matches_manual_split_and_vmap():
  images = _as_float(np.stack([_digits_uint8(i) for i in range(4)]))
  key = jax.random.PRNGKey(0)  # raw uint32 keys work as well as typed ones
  got = jax.jit(
    lambda k, x: augment.augment_batch(
      augment.weak_augment, k, x, pad_fraction=0.25
    )
  )(key, images)
  keys = jax.random.split(key, 4)
  for i in range(4):
    want = augment.weak_augment(keys[i], images[i], pad_fraction=0.25)
    np.testing.assert_array_equal(got[i], want)


def test_classic_cv_strong_view_is_randaugment_with_3_ops():
  """USB's classic-CV RandAugment(3, 5): the dataset configs and the step's view."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from configs import cifar10, cifar100, default, stl10  # pylint: disable=g-import-not-at-top
  from layermatch_jax import views  # pylint: disable=g-import-not-at-top
  from layermatch_jax.train_step import StepConfig  # pylint: disable=g-import-not-at-top

  for module in (default, cifar10, cifar100, stl10):
    assert module.get_config().augment.num_ops == 3, module.__name__
  sc = dataclasses.replace(
    StepConfig.from_config(cifar10.get_config(), 10), axis_name=None
  )
  assert sc.num_ops == 3
  images = np.stack([_digits_uint8(i) for i in range(4)])
  batch = dict(
    labeled_image=images[:2],
    labeled_label=np.zeros(2, np.int32),
    unlabeled_image=images,
  )
  rng = jax.random.key_data(jax.random.key(7))
  strong = jax.jit(lambda r, b: views.make_views(r, 5, b, sc)['x_s'])(
    rng, batch
  )
  keys = views.example_keys(
    jax.random.wrap_key_data(rng), 5, views._STRONG, 4, None
  )  # pylint: disable=protected-access

  def expected(num_ops):
    out = jax.vmap(
      lambda k, x: augment.strong_augment(
        k,
        x,
        num_ops=num_ops,
        cutout_fraction=sc.cutout_fraction,
        pad_fraction=sc.pad_fraction,
        flip=sc.flip,
      )
    )(keys, _as_float(images))
    return views.normalize(out, sc.mean, sc.std)

  np.testing.assert_allclose(strong, expected(3), atol=1e-5)
  assert not np.allclose(
    strong, expected(2), atol=1e-3
  )  # The FixMatch paper's 2 ops.
