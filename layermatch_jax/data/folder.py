"""An image folder: DIR/train/<class>/*, DIR/test/<class>/*, optional DIR/unlabeled/*.

- Class names are the sorted names of the train/ subfolders; test/ must have
  exactly the same subfolders. Images may sit in nested folders below a class
  folder (and anywhere below unlabeled/); files are taken in sorted path order,
  so indices (and therefore saved splits) are stable.
- Files count as images by extension (IMAGE_EXTENSIONS, any case); other files
  and hidden files (.DS_Store, ...) are ignored.
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

from absl import logging
import numpy as np
from PIL import Image

from layermatch_jax.data import sources

IMAGE_EXTENSIONS = frozenset(
    ['.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp'])
LAYOUT = ('expected DIR/train/<class>/*, DIR/test/<class>/* (same classes) and '
          'optionally DIR/unlabeled/*')
VALID_FILES = 'JPEG, PNG, BMP, GIF, TIFF or WebP images'
DEFAULT_MAX_MEMORY_MB = 8192
MIN_FILES_FOR_PROCESSES = 4096  # Below this, starting processes costs more than it saves.


def _visible(name: str) -> bool:
  return not name.startswith('.')


def _class_dirs(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder)
                if _visible(d) and os.path.isdir(os.path.join(folder, d)))


def image_files(folder: str) -> list[str]:
  """All image files below `folder`, recursively, in sorted order."""
  found = []
  for parent, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if _visible(d))
    found.extend(os.path.join(parent, f) for f in files
                 if _visible(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
  return sorted(found)


def _list_classes(folder: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
  paths, labels = [], []
  for k, name in enumerate(classes):
    files = image_files(os.path.join(folder, name))
    if not files:
      raise sources.DataError(
          f'class folder {os.path.join(folder, name)} has no images: every class '
          f'folder needs at least one file of {", ".join(sorted(IMAGE_EXTENSIONS))}')
    paths.extend(files)
    labels.extend([k] * len(files))
  return paths, np.asarray(labels, np.int32)


def _one_line(error: Exception) -> str:
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _bad_file_error(path: str, why: str) -> sources.DataError:
  return sources.DataError(
      f'cannot read image {path} ({why}); valid files are {VALID_FILES}; '
      'remove it, or set data.skip_bad_files=True to skip unreadable files')


def decode_chunk(paths: list[str], size: int) -> tuple[np.ndarray, dict]:
  """Decodes `paths` one by one; returns images and {position: why} of failures.

  Module level: runs in worker processes too.
  """
  images = np.zeros((len(paths), size, size, 3), np.uint8)
  failures = {}
  for i, path in enumerate(paths):
    try:
      images[i] = sources.decode_file(path, size)
    except Exception as e:  # pylint: disable=broad-except
      failures[i] = _one_line(e)  # PIL raises many kinds (OSError, SyntaxError, ...).
  return images, failures


def _decode_all(paths: list[str], size: int, processes: int) -> tuple[np.ndarray, dict]:
  """Decodes `paths` in parallel; returns images and {index: why} of failures.

  Threads by default. Small images cost mostly Python time in PIL, where
  threads gain little (CIFAR-10's 60k 32x32 JPEGs: ~1.3x on 2 cores), so
  `processes` > 1 (data.decode_processes) decodes big folders in spawned worker
  processes instead; the caller's script must then guard `__main__`.
  """
  images = np.zeros((len(paths), size, size, 3), np.uint8)
  failures = {}
  chunk = max(64, -(-len(paths) // (8 * max(processes, 1))))
  starts = range(0, len(paths), chunk)
  def store(start, result):
    images[start:start + len(result[0])] = result[0]
    failures.update({start + i: why for i, why in result[1].items()})
  if processes > 1 and len(paths) >= MIN_FILES_FOR_PROCESSES:
    try:
      context = multiprocessing.get_context('spawn')
      with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        results = pool.map(decode_chunk, [paths[s:s + chunk] for s in starts],
                           [size] * len(starts))
        for start, result in zip(starts, results):
          store(start, result)
      return images, failures
    except (concurrent.futures.process.BrokenProcessPool, OSError, RuntimeError) as e:
      logging.warning('Decoding with processes failed (%s); using threads.', _one_line(e))
      failures.clear()
  def run(start):
    store(start, decode_chunk(paths[start:start + chunk], size))
  list(sources.decode_pool().map(run, starts))
  return images, failures


def _check_all(paths: list[str]) -> dict:
  """Header/structure check without a full decode (for the lazy mode)."""
  failures = {}
  def check(i):
    try:
      with Image.open(paths[i]) as image:
        image.verify()
    except Exception as e:  # pylint: disable=broad-except
      failures[i] = _one_line(e)
  list(sources.decode_pool().map(check, range(len(paths))))
  return failures


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
    raise sources.DataError(f'data.dir is not set: point it at an image folder; {LAYOUT}')
  root = os.path.expanduser(root)
  if not os.path.isdir(root):
    raise sources.DataError(f'data.dir={root} does not exist or is not a folder; {LAYOUT}')
  train_dir, test_dir = os.path.join(root, 'train'), os.path.join(root, 'test')
  unlabeled_dir = os.path.join(root, 'unlabeled')
  if not os.path.isdir(train_dir):
    raise sources.DataError(f'data.dir={root} has no train/ folder; {LAYOUT}')
  classes = _class_dirs(train_dir)
  if not classes:
    raise sources.DataError(f'{train_dir} has no class subfolders; {LAYOUT}')
  if not os.path.isdir(test_dir):
    raise sources.DataError(f'data.dir={root} has no test/ folder; {LAYOUT}')
  test_classes = _class_dirs(test_dir)
  if test_classes != classes:
    missing = sorted(set(classes) - set(test_classes))
    extra = sorted(set(test_classes) - set(classes))
    raise sources.DataError(
        f'class folders of {test_dir} do not match those of {train_dir}: '
        f'missing in test {missing}, not in train {extra}; test/ needs one '
        'subfolder per train class, with the same names')

  start = time.time()
  train_paths, train_labels = _list_classes(train_dir, classes)
  test_paths, test_labels = _list_classes(test_dir, classes)
  unlabeled_paths = image_files(unlabeled_dir) if os.path.isdir(unlabeled_dir) else []
  paths = train_paths + test_paths + unlabeled_paths
  labels = np.concatenate([train_labels, test_labels,
                           np.full(len(unlabeled_paths), -1, np.int32)])
  parts = np.repeat([0, 1, 2], [len(train_paths), len(test_paths), len(unlabeled_paths)])

  max_mb = data_config.get('max_memory_mb', DEFAULT_MAX_MEMORY_MB)
  in_memory = len(paths) * size * size * 3 <= max_mb * 2**20
  if in_memory:
    processes = int(data_config.get('decode_processes', 0))
    images, failures = _decode_all(paths, size, processes)
  else:
    images, failures = None, _check_all(paths)

  keep = np.ones(len(paths), bool)
  if failures:
    first = min(failures)
    if not skip_bad:
      raise _bad_file_error(paths[first], failures[first])
    keep[list(failures)] = False
    logging.warning('Skipped %d unreadable image file(s) of %d in %s (first: %s, %s).',
                    len(failures), len(paths), root, paths[first],
                    failures[first])
    for part, folder in ((0, train_dir), (1, test_dir)):
      left = np.bincount(labels[keep & (parts == part)], minlength=len(classes))
      if (left == 0).any():
        empty = classes[int(np.argmin(left))]
        raise sources.DataError(
            f'class folder {os.path.join(folder, empty)} has no readable images '
            'after skipping bad files; every class needs at least one image')

  def records(part):
    sel = np.flatnonzero(keep & (parts == part))
    if in_memory:
      if keep.all():  # Contiguous: views, no copy of a possibly large array.
        sel = slice(sel[0], sel[-1] + 1) if len(sel) else slice(0, 0)
      return sources.ArrayRecords(images[sel], labels[sel])
    return sources.LazyRecords(_ReadFile(size), [paths[i] for i in sel], labels[sel],
                               (size, size, 3))

  source = sources.Source(
      name='folder',
      num_classes=len(classes),
      class_names=tuple(classes),
      image_shape=(size, size, 3),
      train=records(0),
      test=records(1),
      extra_unlabeled=records(2),
      num_skipped_files=len(failures),
  )
  logging.info('Folder %s: %d classes, %d train, %d test, %d unlabeled images '
               '(%s, %.1fs).', root, len(classes), len(source.train), len(source.test),
               len(source.extra_unlabeled), 'in memory' if in_memory else 'decoded lazily',
               time.time() - start)
  return source
