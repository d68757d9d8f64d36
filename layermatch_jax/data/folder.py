"""An image folder: DIR/train/<class>/*, optional DIR/test/<class>/* and DIR/unlabeled/*.

- Class names are the sorted names of the train/ subfolders; test/, if there,
  must have exactly the same subfolders. Without test/, data.val_per_class
  labeled images of each class are held out from train/ for evaluation (the
  same ones for every seed), or with data.val_per_class=0 the run has no
  evaluation. Images may sit in nested folders below a class
  folder (and anywhere below unlabeled/); files are taken in sorted path order,
  so indices (and therefore saved splits) are stable.
- Files count as images by extension (IMAGE_EXTENSIONS, any case); other files,
  hidden files (.DS_Store, ...), files outside the class folders and entries of
  DIR other than train/, test/ and unlabeled/ are ignored, and listed (with
  why) in the source's details for the data summary.
- Every image is decoded with PIL, EXIF-rotated, converted to RGB (grayscale,
  palette, 16-bit and alpha images alike) and squashed to data.image_size
  square. Always 3 channels keeps one shape for models and augmentation.
- Up to data.max_memory_mb of decoded pixels (default 8192) the whole folder is
  decoded once into memory, by a thread pool (or by data.decode_processes
  worker processes); a bigger folder is decoded on every access instead.
  Nothing is cached on disk.
- A file that does not decode is an error naming the file, or, with
  data.skip_bad_files=True, is left out with a warning giving the count.
"""

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
import time
from typing import Optional

from absl import logging
import numpy as np
from PIL import Image

from layermatch_jax.data import sources

IMAGE_EXTENSIONS = frozenset(
  ['.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp']
)
LAYOUT = (
  'expected DIR/train/<class>/* and optionally DIR/test/<class>/* (same classes) '
  'and DIR/unlabeled/*'
)
PARTS = ('train', 'test', 'unlabeled')
HOLDOUT_SEED = 0x7E57  # Held-out test images do not depend on config.seed.
VALID_FILES = 'JPEG, PNG, BMP, GIF, TIFF or WebP images'
DEFAULT_MAX_MEMORY_MB = 8192
MIN_FILES_FOR_PROCESSES = (
  4096  # Below this, starting processes costs more than it saves.
)


def _visible(name: str) -> bool:
  return not name.startswith('.')


def _class_dirs(folder: str, ignored: Optional[list] = None) -> list[str]:
  """Visible subfolders of `folder`; its other entries go to `ignored`."""
  classes = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if _visible(name) and os.path.isdir(path):
      classes.append(name)
    elif ignored is not None:
      ignored.append(
        (path, 'hidden' if not _visible(name) else 'not in a class folder')
      )
  return classes


def _why_not_an_image(name: str) -> Optional[str]:
  if not _visible(name):
    return 'hidden'
  ext = os.path.splitext(name)[1].lower()
  if ext not in IMAGE_EXTENSIONS:
    return f'not an image: extension {ext or "(none)"}'
  return None


def image_files(folder: str, ignored: Optional[list] = None) -> list[str]:
  """All image files below `folder`, recursively, in sorted order.

  Other files and hidden folders are appended to `ignored` as (path, why).
  """
  found = []
  for parent, dirs, files in os.walk(folder, followlinks=True):
    if ignored is not None:
      ignored.extend(
        (os.path.join(parent, d), 'hidden folder')
        for d in sorted(dirs)
        if not _visible(d)
      )
    dirs[:] = sorted(d for d in dirs if _visible(d))
    for f in files:
      why = _why_not_an_image(f)
      if why is None:
        found.append(os.path.join(parent, f))
      elif ignored is not None:
        ignored.append((os.path.join(parent, f), why))
  return sorted(found)


def _list_classes(
  folder: str, classes: list[str], ignored: Optional[list] = None
) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  for k, name in enumerate(classes):
    files = image_files(os.path.join(folder, name), ignored)
    if not files:
      raise sources.DataError(
        f'class folder {os.path.join(folder, name)} has no images: every class '
        f'folder needs at least one file of {", ".join(sorted(IMAGE_EXTENSIONS))}'
      )
    paths.extend(files)
    labels.extend([k] * len(files))
  return paths, np.asarray(labels, np.int32)


def _one_line(error: Exception) -> str:
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _bad_file_error(path: str, why: str) -> sources.DataError:
  return sources.DataError(
    f'cannot read image {path} ({why}); valid files are {VALID_FILES}; '
    'remove it, or set data.skip_bad_files=True to skip unreadable files'
  )


def decode_chunk(
  paths: list[str], size: int
) -> tuple[np.ndarray, dict, np.ndarray]:
  """Decodes `paths` one by one; returns images, {position: why} of failures and
  the stored (width, height) of each image (0, 0 where it failed).

  Module level: runs in worker processes too.
  """
  images = np.zeros((len(paths), size, size, 3), np.uint8)
  stored = np.zeros((len(paths), 2), np.int32)
  failures = {}
  for i, path in enumerate(paths):
    try:
      images[i], stored[i] = sources.read_image(path, size)
    except Exception as e:  # pylint: disable=broad-except
      failures[i] = _one_line(
        e
      )  # PIL raises many kinds (OSError, SyntaxError, ...).
  return images, failures, stored


def _decode_all(
  paths: list[str], size: int, processes: int
) -> tuple[np.ndarray, dict, np.ndarray]:
  """Decodes `paths` in parallel; returns images and {index: why} of failures.

  Threads by default. Small images cost mostly Python time in PIL, where
  threads gain little (CIFAR-10's 60k 32x32 JPEGs: ~1.3x on 2 cores), so
  `processes` > 1 (data.decode_processes) decodes big folders in spawned worker
  processes instead; the caller's script must then guard `__main__`.
  """
  images = np.zeros((len(paths), size, size, 3), np.uint8)
  stored = np.zeros((len(paths), 2), np.int32)
  failures = {}
  chunk = max(64, -(-len(paths) // (8 * max(processes, 1))))
  starts = range(0, len(paths), chunk)

  def store(start, result):
    images[start : start + len(result[0])] = result[0]
    stored[start : start + len(result[0])] = result[2]
    failures.update({start + i: why for i, why in result[1].items()})

  if processes > 1 and len(paths) >= MIN_FILES_FOR_PROCESSES:
    try:
      context = multiprocessing.get_context('spawn')
      with concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=context
      ) as pool:
        results = pool.map(
          decode_chunk,
          [paths[s : s + chunk] for s in starts],
          [size] * len(starts),
        )
        for start, result in zip(starts, results):
          store(start, result)
      return images, failures, stored
    except (
      concurrent.futures.process.BrokenProcessPool,
      OSError,
      RuntimeError,
    ) as e:
      logging.warning(
        'Decoding with processes failed (%s); using threads.', _one_line(e)
      )
      failures.clear()

  def run(start):
    store(start, decode_chunk(paths[start : start + chunk], size))

  list(sources.decode_pool().map(run, starts))
  return images, failures, stored


def _check_all(paths: list[str]) -> tuple[dict, np.ndarray]:
  """Header/structure check without a full decode (for the lazy mode)."""
  failures = {}
  stored = np.zeros((len(paths), 2), np.int32)

  def check(i):
    try:
      with Image.open(paths[i]) as image:
        stored[i] = image.size
        image.verify()
    except Exception as e:  # pylint: disable=broad-except
      failures[i] = _one_line(e)

  list(sources.decode_pool().map(check, range(len(paths))))
  return failures, stored


def holdout_counts(class_counts: np.ndarray, val_per_class) -> np.ndarray:
  """Images per class held out for evaluation (data.val_per_class).

  A fraction takes round(fraction * count), at least 1; a count takes that
  many; either way one image per class is always left to train on.
  """
  class_counts = np.asarray(class_counts, np.int64)
  if val_per_class < 1:
    wanted = (
      np.maximum(1, np.round(val_per_class * class_counts))
      if val_per_class > 0
      else 0
    )
  else:
    wanted = np.full_like(class_counts, int(val_per_class))
  return np.clip(np.minimum(wanted, class_counts - 1), 0, None).astype(np.int64)


def _holdout_mask(
  labels: np.ndarray, num_classes: int, val_per_class
) -> np.ndarray:
  """True for the train images held out, drawn from HOLDOUT_SEED per class."""
  counts = holdout_counts(
    np.bincount(labels, minlength=num_classes), val_per_class
  )
  rng = np.random.default_rng(HOLDOUT_SEED)
  held = np.zeros(len(labels), bool)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    held[rng.choice(members, counts[c], replace=False)] = True
  return held


def _size_counts(stored: np.ndarray) -> dict:
  """{'WxH': count} of the stored image sizes, most common first."""
  keys, counts = np.unique(
    stored[(stored > 0).all(1)], axis=0, return_counts=True
  )
  order = np.argsort(-counts, kind='stable')
  return {f'{keys[i][0]}x{keys[i][1]}': int(counts[i]) for i in order}


class _ReadFile:
  """Picklable, thread-safe reader for LazyRecords."""

  def __init__(self, size: int):
    self.size = size

  def __call__(self, path):
    try:
      return sources.decode_file(path, self.size)
    except Exception as e:  # pylint: disable=broad-except
      raise _bad_file_error(path, _one_line(e)) from e


def load_folder_source(data_config) -> sources.Source:
  root = data_config.get('dir', None)
  size = data_config.image_size
  skip_bad = bool(data_config.get('skip_bad_files', False))
  if not root:
    raise sources.DataError(
      f'data.dir is not set: point it at an image folder; {LAYOUT}'
    )
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise sources.DataError(
      f'data.dir={root} does not exist or is not a folder; {LAYOUT}'
    )
  train_dir, test_dir = os.path.join(root, 'train'), os.path.join(root, 'test')
  unlabeled_dir = os.path.join(root, 'unlabeled')
  if not os.path.isdir(train_dir):
    raise sources.DataError(f'data.dir={root} has no train/ folder; {LAYOUT}')
  ignored = [
    (os.path.join(root, name), 'not train/, test/ or unlabeled/')
    for name in sorted(os.listdir(root))
    if name not in PARTS
  ]
  classes = _class_dirs(train_dir, ignored)
  if not classes:
    raise sources.DataError(f'{train_dir} has no class subfolders; {LAYOUT}')
  has_test = os.path.isdir(test_dir)
  val_per_class = data_config.get('val_per_class', 0.2)
  test_classes = _class_dirs(test_dir, ignored) if has_test else classes
  if test_classes != classes:
    missing = sorted(set(classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(classes))
    raise sources.DataError(
      f'class folders of {test_dir} do not match those of {train_dir}: '
      f'missing in test {missing}, not in train {extra}; test/ needs one '
      'subfolder per train class, with the same names'
    )

  start = time.time()
  train_paths, train_labels = _list_classes(train_dir, classes, ignored)
  test_paths, test_labels = (
    _list_classes(test_dir, classes, ignored)
    if has_test
    else ([], np.zeros((0,), np.int32))
  )
  unlabeled_paths = (
    image_files(unlabeled_dir, ignored) if os.path.isdir(unlabeled_dir) else []
  )
  paths = train_paths + test_paths + unlabeled_paths
  labels = np.concatenate(
    [train_labels, test_labels, np.full(len(unlabeled_paths), -1, np.int32)]
  )
  parts = np.repeat(
    [0, 1, 2], [len(train_paths), len(test_paths), len(unlabeled_paths)]
  )
  if (
    not has_test
  ):  # Part of train/ becomes the test split, before anything is decoded.
    parts[: len(train_paths)][
      _holdout_mask(train_labels, len(classes), val_per_class)
    ] = 1

  max_mb = data_config.get('max_memory_mb', DEFAULT_MAX_MEMORY_MB)
  in_memory = len(paths) * size * size * 3 <= max_mb * 2**20
  if in_memory:
    processes = int(data_config.get('decode_processes', 0))
    images, failures, stored = _decode_all(paths, size, processes)
  else:
    images = None
    failures, stored = _check_all(paths)

  keep = np.ones(len(paths), bool)
  if failures:
    first = min(failures)
    if not skip_bad:
      raise _bad_file_error(paths[first], failures[first])
    keep[list(failures)] = False
    logging.warning(
      'Skipped %d unreadable image file(s) of %d in %s (first: %s, %s).',
      len(failures),
      len(paths),
      root,
      paths[first],
      failures[first],
    )
    # Held out from train/, a class may rightly have no test image.
    for part, folder in ((0, train_dir), (1, test_dir))[: 2 if has_test else 1]:
      left = np.bincount(labels[keep & (parts == part)], minlength=len(classes))
      if (left == 0).any():
        empty = classes[int(np.argmin(left))]
        raise sources.DataError(
          f'class folder {os.path.join(folder, empty)} has no readable images '
          'after skipping bad files; every class needs at least one image'
        )

  def records(part):
    sel = np.flatnonzero(keep & (parts == part))
    if in_memory:
      if (
        keep.all() and has_test
      ):  # Contiguous: views, no copy of a possibly large array.
        sel = slice(sel[0], sel[-1] + 1) if len(sel) else slice(0, 0)
      return sources.ArrayRecords(images[sel], labels[sel])
    return sources.LazyRecords(
      _ReadFile(size), [paths[i] for i in sel], labels[sel], (size, size, 3)
    )

  source = sources.Source(
    name='folder',
    num_classes=len(classes),
    class_names=tuple(classes),
    image_shape=(size, size, 3),
    train=records(0),
    test=records(1),
    extra_unlabeled=records(2),
    num_skipped_files=len(failures),
    details=dict(
      dir=root,
      test_from=(
        'test/'
        if has_test
        else 'held out from train/'
        if (parts == 1).any()
        else 'none'
      ),
      val_per_class=None if has_test else val_per_class,
      ignored_files=ignored,
      skipped_files=[(paths[i], failures[i]) for i in sorted(failures)],
      stored_sizes=_size_counts(stored[keep]),
    ),
  )
  logging.info(
    'Folder %s: %d classes, %d train, %d test, %d unlabeled images '
    '(%s, %.1fs).',
    root,
    len(classes),
    len(source.train),
    len(source.test),
    len(source.extra_unlabeled),
    'in memory' if in_memory else 'decoded lazily',
    time.time() - start,
  )
  return source
