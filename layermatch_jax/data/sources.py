"""What every image source is: `Source`, its record collections, image decoding.

The loaders (digits.py, folder.py, tfds_sources.py) build a `Source` from these
parts; `data.load_source` (data/__init__.py) picks the loader by data.name.

A `Source` holds three random-access record collections (`train`, the labeled
pool; `test`; `extra_unlabeled`, images that never had labels). Every
collection follows grain's `RandomAccessDataSource` protocol and adds two
things the input pipeline uses to stay fast:

  len(records)                 number of images
  records[i]                   {'image': uint8 [H, W, C], 'label': int}
  records.labels               int32 [N], -1 where the label is unknown
  records.get_batch(indices)   (uint8 [n, H, W, C], int32 [n]) in one call

All images are RGB (C = 3) and square (H = W = data.image_size), whatever the
stored format: one shape for every model and augmentation downstream.
"""

import concurrent.futures
import dataclasses
import os
import threading
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps


class DataError(ValueError):
  """Bad or missing data; the message is one line that says how to fix it."""


class Records(Protocol):
  labels: np.ndarray

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict: ...

  def get_batch(self, indices) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C) after resizing.
  train: Records
  test: Records
  extra_unlabeled: Records
  num_skipped_files: int = 0  # Unreadable files left out (data.skip_bad_files).
  # What a loader found beyond the records, for the data summary (data/summary.py):
  # e.g. a folder's ignored and skipped files, stored image sizes, held-out test.
  details: dict = dataclasses.field(default_factory=dict)


class ArrayRecords:
  """Images held in memory as one uint8 array; batches by fancy indexing."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
        f'images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}'
      )
    if len(labels) != len(images):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self.images = images
    self.labels = np.asarray(labels, np.int32)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    return {'image': self.images[index], 'label': int(self.labels[index])}

  def get_batch(self, indices):
    indices = np.asarray(indices, np.int64)
    return self.images[indices], self.labels[indices]

  def __repr__(self):
    return f'ArrayRecords({self.images.shape})'


def empty_records(image_shape) -> ArrayRecords:
  return ArrayRecords(
    np.zeros((0, *image_shape), np.uint8), np.zeros((0,), np.int32)
  )


# One pool for all lazily decoded collections: decoding releases the GIL.
_POOL_LOCK = threading.Lock()
_POOL = None


def decode_pool() -> concurrent.futures.ThreadPoolExecutor:
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = concurrent.futures.ThreadPoolExecutor(
        max_workers=max(2, os.cpu_count() or 1), thread_name_prefix='decode'
      )
    return _POOL


class LazyRecords:
  """Images decoded on every access (ImageNet-100, folders too big for memory).

  `read(key) -> uint8 [H, W, C]` must be thread-safe; labels are known upfront
  so that splits never decode an image.
  """

  def __init__(
    self,
    read: Callable[[object], np.ndarray],
    keys: Sequence,
    labels: np.ndarray,
    image_shape: tuple[int, int, int],
  ):
    if len(keys) != len(labels):
      raise ValueError(f'{len(keys)} keys but {len(labels)} labels')
    self._read = read
    self._keys = keys
    self.labels = np.asarray(labels, np.int32)
    self.image_shape = tuple(image_shape)

  def __len__(self):
    return len(self._keys)

  def __getitem__(self, index):
    return {
      'image': self._read(self._keys[index]),
      'label': int(self.labels[index]),
    }

  def get_batch(self, indices):
    indices = np.asarray(indices, np.int64)
    images = np.empty((len(indices), *self.image_shape), np.uint8)

    def fill(j):
      images[j] = self._read(self._keys[indices[j]])

    list(decode_pool().map(fill, range(len(indices))))
    return images, self.labels[indices]

  def __repr__(self):
    return f'LazyRecords({len(self)}, {self.image_shape})'


def gather(records: Records, indices) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) for `indices`; works for any grain-style source too."""
  if hasattr(records, 'get_batch'):
    return records.get_batch(indices)
  items = [records[int(i)] for i in indices]
  return (
    np.stack([np.asarray(x['image'], np.uint8) for x in items]),
    np.asarray([x['label'] for x in items], np.int32),
  )


def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
  """Any PIL image -> uint8 [size, size, 3] (squashed, not cropped)."""
  if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
    # 16-bit/float grayscale: PIL's convert('L') would clip to white.
    a = np.asarray(image, np.float32)
    hi = 65535.0 if image.mode != 'F' else max(float(a.max()), 1.0)
    image = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8))
  if image.mode != 'RGB':
    image = image.convert('RGB')
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def read_image(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """(uint8 [size, size, 3], the stored (width, height)) of one image file."""
  with Image.open(path) as image:
    stored = image.size
    # JPEG only: decode at a reduced scale that is still >= size (much faster).
    image.draft('RGB', (size, size))
    image = ImageOps.exif_transpose(image)
    return to_rgb_array(image, size), stored


def decode_file(path: str, size: int) -> np.ndarray:
  """Decodes one image file (JPEG/PNG/BMP/GIF/TIFF/WebP) to uint8 [size, size, 3]."""
  return read_image(path, size)[0]


def resize_array(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] (C = 1 or 3) -> uint8 [size, size, 3]."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if (
    image.shape[:2] == (size, size) and image.ndim == 3 and image.shape[-1] == 3
  ):
    return image
  return to_rgb_array(Image.fromarray(image), size)
