"""Builds a small practitioner's image folder: the README's "Your own images" example.

  layermatch-make-example-folder --out=/tmp/parts   # or: python tools/make_example_folder.py ...

A stand-in for a workshop's inspection photos: three kinds of part drawn as
shapes (`disc`, `plate`, `wedge`) of random size, position, colour and
rotation on a noisy background, as PNGs of 40x40 px. As a practitioner's folder
would be, it is uneven and partly labeled:

  OUT/images/train/disc/    6 labeled photos
  OUT/images/train/plate/  18 labeled photos
  OUT/images/train/wedge/  10 labeled photos
  OUT/images/train/notes.txt  (not an image: ignored, and reported)
  OUT/images/unlabeled/   600 photos without labels
  OUT/new_photos/          30 photos to classify after training
  OUT/new_photos_truth.csv    what those 30 are (to check predictions; never trained on)

There is no test/ folder: the trainer holds labeled photos out for evaluation.
Everything is drawn from --seed; the same seed gives the same files.
Bad input (OUT exists and is not empty) ends with one `error:` line, exit 2.
"""

import os

import numpy as np
from PIL import Image
from PIL import ImageDraw

from layermatch_jax import cli_util

CLASSES = ('disc', 'plate', 'wedge')
LABELED = {'disc': 6, 'plate': 18, 'wedge': 10}
NUM_UNLABELED = 600
NUM_NEW = 30
SIZE = 40


def draw_part(rng: np.random.Generator, kind: str) -> Image.Image:
  """One photo of a part of `kind` on a noisy grey background."""
  background = (
    rng.normal(120, 25, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
  )
  image = Image.fromarray(background)
  draw = ImageDraw.Draw(image)
  r = rng.uniform(8, 15)
  cx, cy = rng.uniform(r, SIZE - r, size=2)
  colour = tuple(int(c) for c in rng.integers(0, 256, 3))
  angle = rng.uniform(0, 2 * np.pi)
  if kind == 'disc':
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  else:
    corners = 4 if kind == 'plate' else 3
    points = [
      (
        cx + r * np.cos(angle + 2 * np.pi * i / corners),
        cy + r * np.sin(angle + 2 * np.pi * i / corners),
      )
      for i in range(corners)
    ]
    draw.polygon(points, fill=colour)
  return image


def make_folder(out: str, seed: int = 0) -> dict:
  """Writes the folder; returns {part: count}. ToolError if `out` holds files."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise cli_util.ToolError(
      f'--out={out} exists and is not an empty directory: give a new path'
    )
  rng = np.random.default_rng(seed)
  counts = {}
  images = os.path.join(out, 'images')
  for kind in CLASSES:
    os.makedirs(os.path.join(images, 'train', kind))
    for i in range(LABELED[kind]):
      draw_part(rng, kind).save(
        os.path.join(images, 'train', kind, f'{kind}_{i:03d}.png')
      )
    counts[f'images/train/{kind}'] = LABELED[kind]
  with open(os.path.join(images, 'train', 'notes.txt'), 'w') as f:
    f.write('Photos sorted by hand on the line, week 12.\n')
  for part, n in (('images/unlabeled', NUM_UNLABELED), ('new_photos', NUM_NEW)):
    os.makedirs(os.path.join(out, part))
    kinds = rng.choice(len(CLASSES), n)
    for i, k in enumerate(kinds):
      draw_part(rng, CLASSES[k]).save(
        os.path.join(out, part, f'photo_{i:04d}.png')
      )
    counts[part] = n
  # What the new photos really are, to check predictions against (not for training).
  with open(os.path.join(out, 'new_photos_truth.csv'), 'w') as f:
    f.write('path,class\n')
    f.writelines(
      f'new_photos/photo_{i:04d}.png,{CLASSES[k]}\n'
      for i, k in enumerate(kinds)
    )
  return counts


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--out', required=True, help='A new directory to write.')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  counts = make_folder(args.out, args.seed)
  print(', '.join(f'{part}: {n}' for part, n in counts.items()))


def run(argv=None):
  """`layermatch-make-example-folder`: bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
