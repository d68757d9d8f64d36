"""Writes a PNG grid of weak and strong views, to check augmentation by eye.

Rows are images; columns are the original, then `--views` weak views, then
`--views` strong views (groups separated by a wider gap).

  python tools/show_augment.py --out=/tmp/augment.png
  python tools/show_augment.py --out=/tmp/augment.png --image_dir=/tmp/cifar10/train

Without --image_dir the images are scikit-learn digits upscaled to colour.
"""

import argparse
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

# Runs as a script from the repo root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layermatch_jax import augment  # pylint: disable=g-import-not-at-top

_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')


def digits_images(num, size):
  """`num` sklearn digits as [size, size, 3] uint8, tinted so colour ops show."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits().images[:num] / 16.0
  yy, xx = np.mgrid[:size, :size] / (size - 1)
  out = []
  for digit in digits:
    big = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (size, size), Image.BILINEAR), np.float32)
    rgb = np.stack([big, 0.6 * big + 80 * xx, 255 - 0.7 * big - 60 * yy], -1)
    out.append(np.clip(rgb, 0, 255).astype(np.uint8))
  return np.stack(out)


def folder_images(image_dir, num, size, seed):
  """`num` images picked at random (by `seed`) below `image_dir`, resized."""
  paths = sorted(
      os.path.join(root, name)
      for root, _, names in os.walk(image_dir)
      for name in names if name.lower().endswith(_EXTENSIONS))
  if not paths:
    raise SystemExit(f'error: no images ({", ".join(_EXTENSIONS)}) below --image_dir={image_dir}')
  picked = np.random.RandomState(seed).choice(
      len(paths), min(num, len(paths)), replace=False)
  return np.stack([
      np.asarray(Image.open(paths[i]).convert('RGB').resize(
          (size, size), Image.BILINEAR)) for i in sorted(picked)])


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
      canvas[y:y + h, x:x + w] = tile
      x += w + gap
  return canvas


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='PNG file to write.')
  parser.add_argument('--num', type=int, default=8, help='Images (rows).')
  parser.add_argument('--views', type=int, default=4,
                      help='Weak views and strong views per image.')
  parser.add_argument('--image_dir', default=None,
                      help='Folder searched recursively for images.')
  parser.add_argument('--size', type=int, default=32, help='Image side in pixels.')
  parser.add_argument('--scale', type=int, default=3, help='Pixel zoom in the grid.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_ops', type=int, default=2)
  parser.add_argument('--cutout_fraction', type=float, default=0.5)
  parser.add_argument('--pad_fraction', type=float, default=0.125)
  args = parser.parse_args(argv)
  for name in ('num', 'views', 'size', 'scale'):
    if getattr(args, name) < 1:
      parser.exit(2, f'error: --{name}={getattr(args, name)} must be at least 1\n')

  if args.image_dir:
    images = folder_images(args.image_dir, args.num, args.size, args.seed)
  else:
    images = digits_images(args.num, args.size)

  weak = jax.vmap(functools.partial(
      augment.weak_augment, pad_fraction=args.pad_fraction))
  strong = jax.vmap(functools.partial(
      augment.strong_augment, num_ops=args.num_ops,
      cutout_fraction=args.cutout_fraction, pad_fraction=args.pad_fraction))

  @jax.jit
  def views(key, images):
    x = images.astype(jnp.float32) / 255.0
    n = x.shape[0]
    keys = jax.random.split(key, 2 * args.views * n).reshape(2, args.views, n)
    weak_views = [weak(keys[0, v], x) for v in range(args.views)]
    strong_views = [strong(keys[1, v], x) for v in range(args.views)]
    return jnp.stack([x] + weak_views + strong_views, axis=1)  # [N, K, H, W, C]

  grid = np.asarray(views(jax.random.key(args.seed), jnp.asarray(images)))
  grid = np.round(grid * 255).astype(np.uint8)
  canvas = make_grid(grid, args.scale, groups=(1, 1 + args.views))
  Image.fromarray(canvas).save(args.out)
  print(f'wrote {args.out} ({grid.shape[0]} images x {grid.shape[1]} columns)')


if __name__ == '__main__':
  main()
