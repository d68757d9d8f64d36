"""Writes a PNG grid of weak and strong views, to check augmentation by eye.

  layermatch-show-augment --out=/tmp/augment.png     # or: python tools/show_augment.py ...
  layermatch-show-augment --out=/tmp/augment.png --image_dir=/tmp/cifar10/train \
      --config=configs/cifar10_cpu.py

Rows are images; columns are the original, then `--views` weak views, then
`--views` strong views (groups separated by a wider gap).

The views are made as training makes them, from a config's settings:
augment.flip, augment.pad_fraction, augment.num_ops, augment.cutout_fraction
and data.image_size. --config names the config; by default the images'
own: configs/demo.py for the digits (no flip: a mirrored digit is another
digit), configs/default.py for --image_dir. --flip/--no-flip, --num_ops, ...
override one setting. Without --image_dir the images are scikit-learn digits
upscaled to colour.

Prints the file written and the settings used. Bad input ends with one line
`error: ...` on stderr and exit status 2.
"""

import argparse
import functools
import os

import numpy as np
from PIL import Image

from layermatch_jax import cli_util

_EXTENSIONS = (
  '.png',
  '.jpg',
  '.jpeg',
  '.bmp',
  '.gif',
  '.webp',
  '.tif',
  '.tiff',
)
# The config whose images are shown: the digits are the demo's.
DIGITS_CONFIG = os.path.join(cli_util.CHECKOUT, 'configs', 'demo.py')
FOLDER_CONFIG = os.path.join(cli_util.CHECKOUT, 'configs', 'default.py')
# Settings a flag may override, as named in the config.
SETTINGS = {
  'flip': 'augment.flip',
  'pad_fraction': 'augment.pad_fraction',
  'num_ops': 'augment.num_ops',
  'cutout_fraction': 'augment.cutout_fraction',
  'size': 'data.image_size',
}


def digits_images(num, size):
  """`num` sklearn digits as [size, size, 3] uint8, tinted so colour ops show."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits().images[:num] / 16.0
  yy, xx = np.mgrid[:size, :size] / (size - 1)
  out = []
  for digit in digits:
    big = np.asarray(
      Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR
      ),
      np.float32,
    )
    rgb = np.stack([big, 0.6 * big + 80 * xx, 255 - 0.7 * big - 60 * yy], -1)
    out.append(np.clip(rgb, 0, 255).astype(np.uint8))
  return np.stack(out)


def folder_images(image_dir, num, size, seed):
  """`num` images picked at random (by `seed`) below `image_dir`, resized."""
  paths = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(image_dir)
    for name in names
    if name.lower().endswith(_EXTENSIONS)
  )
  if not paths:
    raise cli_util.ToolError(
      f'no images ({", ".join(_EXTENSIONS)}) below --image_dir={image_dir}'
    )
  picked = np.random.RandomState(seed).choice(
    len(paths), min(num, len(paths)), replace=False
  )
  return np.stack(
    [
      np.asarray(
        Image.open(paths[i]).convert('RGB').resize((size, size), Image.BILINEAR)
      )
      for i in sorted(picked)
    ]
  )


def settings(args) -> dict:
  """The augmentation settings: the config's, each flag given overriding its own;
  'config' names the config file read."""
  default = FOLDER_CONFIG if args.image_dir else DIGITS_CONFIG
  config = cli_util.load_config_file(args.config or default)
  out = {}
  for name, key in SETTINGS.items():
    value = getattr(args, name)
    if value is None:
      group, field = key.split('.')
      value = config[group][field]
    out[name] = value
  out['config'] = args.config or os.path.relpath(default, cli_util.CHECKOUT)
  return out


def make_views(
  images,
  views: int,
  seed: int,
  *,
  flip: bool,
  pad_fraction: float,
  num_ops: int,
  cutout_fraction: float,
  strong: bool = True,
) -> np.ndarray:
  """uint8 [N, H, W, 3] -> uint8 [N, 1 + views (+ views), H, W, 3]: each image,
  its weak views and (`strong`) its strong views, made as training makes them."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from layermatch_jax import augment  # pylint: disable=g-import-not-at-top

  weak_fn = jax.vmap(
    functools.partial(
      augment.weak_augment, pad_fraction=pad_fraction, flip=flip
    )
  )
  strong_fn = jax.vmap(
    functools.partial(
      augment.strong_augment,
      num_ops=num_ops,
      cutout_fraction=cutout_fraction,
      pad_fraction=pad_fraction,
      flip=flip,
    )
  )

  @jax.jit
  def make(key, images):
    x = images.astype(jnp.float32) / 255.0
    n = x.shape[0]
    keys = jax.random.split(key, 2 * views * n).reshape(2, views, n)
    out = [x] + [weak_fn(keys[0, v], x) for v in range(views)]
    if strong:
      out += [strong_fn(keys[1, v], x) for v in range(views)]
    return jnp.stack(out, axis=1)  # [N, K, H, W, C]

  grid = np.asarray(make(jax.random.key(seed), jnp.asarray(images)))
  return np.round(grid * 255).astype(np.uint8)


def make_grid(rows, scale, gap=2, group_gap=8, groups=(1,)):
  """rows: [R, K, H, W, 3] uint8 -> one image; extra gap after column indices in groups."""
  num_rows, num_cols, h, w, _ = rows.shape
  h, w = h * scale, w * scale
  extra = [group_gap if c in groups else 0 for c in range(num_cols)]
  width = num_cols * (w + gap) + gap + sum(extra)
  height = num_rows * (h + gap) + gap
  canvas = np.full((height, width, 3), 255, np.uint8)
  for r in range(num_rows):
    x = gap
    for c in range(num_cols):
      x += extra[c]
      tile = np.repeat(np.repeat(rows[r, c], scale, axis=0), scale, axis=1)
      y = gap + r * (h + gap)
      canvas[y : y + h, x : x + w] = tile
      x += w + gap
  return canvas


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--out', required=True, help='PNG file to write.')
  parser.add_argument(
    '--config',
    default=None,
    help='Config file whose augmentation is shown (default: configs/demo.py '
    'for the digits, configs/default.py with --image_dir).',
  )
  parser.add_argument('--num', type=int, default=8, help='Images (rows).')
  parser.add_argument(
    '--views',
    type=int,
    default=4,
    help='Weak views and strong views per image.',
  )
  parser.add_argument(
    '--image_dir', default=None, help='Folder searched recursively for images.'
  )
  parser.add_argument(
    '--size',
    type=int,
    default=None,
    help="Image side in pixels (default: the config's data.image_size).",
  )
  parser.add_argument(
    '--scale', type=int, default=3, help='Pixel zoom in the grid.'
  )
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--flip',
    action=argparse.BooleanOptionalAction,
    default=None,
    help="Random horizontal flip (default: the config's augment.flip).",
  )
  parser.add_argument(
    '--num_ops',
    type=int,
    default=None,
    help="RandAugment ops (default: the config's augment.num_ops).",
  )
  parser.add_argument(
    '--cutout_fraction',
    type=float,
    default=None,
    help="Cutout size (default: the config's augment.cutout_fraction).",
  )
  parser.add_argument(
    '--pad_fraction',
    type=float,
    default=None,
    help="Pad-crop size (default: the config's augment.pad_fraction).",
  )
  args = parser.parse_args(argv)
  for name in ('num', 'views', 'size', 'scale'):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise cli_util.ToolError(f'--{name}={value} must be at least 1')
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    raise cli_util.ToolError(
      f'--out={args.out}: directory {out_dir} does not exist'
    )
  return args


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  args = parse_args(argv)
  s = settings(args)
  if args.image_dir:
    images = folder_images(args.image_dir, args.num, s['size'], args.seed)
  else:
    images = digits_images(args.num, s['size'])
  grid = make_views(
    images,
    args.views,
    args.seed,
    flip=s['flip'],
    pad_fraction=s['pad_fraction'],
    num_ops=s['num_ops'],
    cutout_fraction=s['cutout_fraction'],
  )
  canvas = make_grid(grid, args.scale, groups=(1, 1 + args.views))
  with cli_util.atomic_write(args.out, 'wb') as f:
    Image.fromarray(canvas).save(f, format='PNG')
  shown = ', '.join(f'{k}={s[k]}' for k in SETTINGS)
  print(
    f'wrote {args.out} ({grid.shape[0]} images x {grid.shape[1]} columns; {shown} '
    f'({s["config"]} and flags))'
  )


def run(argv=None):
  """`layermatch-show-augment`: bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
