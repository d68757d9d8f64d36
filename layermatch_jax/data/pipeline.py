"""Host input pipeline: uint8 batches shaped [devices, per-device batch, ...] for pmap.

A grain `MapDataset` over *step numbers* maps step k to its whole batch, so an
iterator's state is just the next step (`{'next_index': k}`) and a restored
iterator yields exactly the same batches. Augmentation runs on device; the
host only gathers uint8 images (one numpy fancy-indexing call per stream for
in-memory data).

Sampling. Each stream (labeled: the split's indices, or with
data.labeled_sampling='balanced' those indices with every class's repeated up
to the largest class's count; unlabeled: every train
image, then every extra unlabeled image) is an endless sequence
perm_0 ++ perm_1 ++ ... of per-epoch permutations drawn from
(config.seed, stream, epoch). Global batch k is items [k*G, (k+1)*G) of that
sequence (G = global batch of the stream), so it does not depend on the number
of processes or devices: process p of P takes the p-th contiguous 1/P of it and
splits its share over its local devices in order, i.e. global device
p * D + d holds the same examples for any (P, D) with the same P * D layout,
and the union over processes is the P = 1 batch.

Train batch (b = config.batch_size / (D * P), mu = config.uratio):
  labeled_image    uint8 [D, b, H, W, C]
  labeled_label    int32 [D, b]
  labeled_index    int32 [D, b]       index into source.train
  unlabeled_image  uint8 [D, mu*b, H, W, C]
  unlabeled_label  int32 [D, mu*b]    hidden true label; -1 for extra images
  unlabeled_index  int32 [D, mu*b]    index into the unlabeled pool
                                      (train images first, then extra ones)
Eval batch (b = config.eval_batch_size / D, rounded up):
  image uint8 [D, b, H, W, C], label int32 [D, b], mask bool [D, b]
  (padding: zero image, label 0, mask False).
"""

import dataclasses
import functools
import sys
import time

import chex
import grain
import numpy as np

from layermatch_jax.data.sources import DataError
from layermatch_jax.data.sources import gather
from layermatch_jax.data.sources import Records
from layermatch_jax.data.sources import Source

LABELED_STREAM, UNLABELED_STREAM = 0, 1
_ENDLESS = sys.maxsize  # Steps in a train "epoch" of the step dataset.

# data.labeled_sampling: over labeled images (as USB) or over classes.
LABELED_SAMPLINGS = ('uniform', 'balanced')


@functools.lru_cache(maxsize=32)
def _epoch_permutation(
  n: int, seed: int, stream: int, epoch: int
) -> np.ndarray:
  rng = np.random.default_rng(
    np.random.SeedSequence([seed % 2**32, stream, epoch])
  )
  perm = rng.permutation(n)
  perm.flags.writeable = False  # Shared between threads through the cache.
  return perm


def stream_items(
  n: int, seed: int, stream: int, start: int, count: int
) -> np.ndarray:
  """Items [start, start + count) of perm_0 ++ perm_1 ++ ..., perms of range(n)."""
  epochs, offsets = np.divmod(start + np.arange(count, dtype=np.int64), n)
  out = np.empty((count,), np.int64)
  for epoch in np.unique(epochs):
    sel = epochs == epoch
    out[sel] = _epoch_permutation(n, seed, stream, int(epoch))[offsets[sel]]
  return out


def unlabeled_pool_size(source: Source) -> int:
  return len(source.train) + len(source.extra_unlabeled)


def _gather_pool(train: Records, extra: Records, indices: np.ndarray):
  """Gathers from the concatenation train ++ extra without building it."""
  n = len(train)
  in_train = indices < n
  if in_train.all():
    images, labels = gather(train, indices)
    return images, labels
  ti, ei = np.flatnonzero(in_train), np.flatnonzero(~in_train)
  t_img, t_lab = gather(train, indices[ti])
  e_img, _ = gather(extra, indices[ei] - n)
  images = np.empty((len(indices), *e_img.shape[1:]), np.uint8)
  labels = np.full((len(indices),), -1, np.int32)  # Extra images have no label.
  images[ti], labels[ti] = t_img, t_lab
  images[ei] = e_img
  return images, labels


def _per_device(x: np.ndarray, num_devices: int) -> np.ndarray:
  return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class TrainBatchFn:
  """step -> this process's part of the global train batch (module level: picklable)."""

  train: Records
  extra: Records
  labeled_indices: np.ndarray
  seed: int
  global_labeled: int
  global_unlabeled: int
  process_index: int
  process_count: int
  num_devices: int
  image_shape: tuple

  def __call__(self, step: int) -> dict:
    bl = self.global_labeled // self.process_count
    bu = self.global_unlabeled // self.process_count
    pos = stream_items(
      len(self.labeled_indices),
      self.seed,
      LABELED_STREAM,
      step * self.global_labeled + self.process_index * bl,
      bl,
    )
    l_idx = self.labeled_indices[pos]
    l_img, l_lab = gather(self.train, l_idx)
    if bu:
      u_idx = stream_items(
        len(self.train) + len(self.extra),
        self.seed,
        UNLABELED_STREAM,
        step * self.global_unlabeled + self.process_index * bu,
        bu,
      )
      u_img, u_lab = _gather_pool(self.train, self.extra, u_idx)
    else:  # uratio = 0 (supervised): empty unlabeled arrays, same keys.
      u_idx = np.zeros((0,), np.int64)
      u_img, u_lab = (
        np.zeros((0, *self.image_shape), np.uint8),
        np.zeros((0,), np.int32),
      )
    # A source's records must all have the source's image shape (sources.py).
    chex.assert_shape(l_img, (bl, *self.image_shape))
    chex.assert_shape(u_img, (bu, *self.image_shape))
    d = self.num_devices
    return {
      'labeled_image': _per_device(np.asarray(l_img, np.uint8), d),
      'labeled_label': _per_device(np.asarray(l_lab, np.int32), d),
      'labeled_index': _per_device(l_idx.astype(np.int32), d),
      'unlabeled_image': _per_device(np.asarray(u_img, np.uint8), d),
      'unlabeled_label': _per_device(np.asarray(u_lab, np.int32), d),
      'unlabeled_index': _per_device(u_idx.astype(np.int32), d),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class EvalBatchFn:
  """batch number -> one padded eval batch.

  Batch j holds test images [j b, (j + 1) b); its arrays are padded with masked
  rows to a multiple of the device count (and the last batch to full size), so
  any eval_batch_size works on any number of devices.
  """

  records: Records
  batch_size: int
  num_devices: int
  image_shape: tuple
  stride: int = (
    1  # Batch i of this process is global batch i * stride + offset.
  )
  offset: int = 0

  def __call__(self, i: int) -> dict:
    j = i * self.stride + self.offset
    n, b = len(self.records), self.batch_size
    idx = np.arange(j * b, min((j + 1) * b, n))
    d = self.num_devices
    size = -(-b // d) * d
    images = np.zeros((size, *self.image_shape), np.uint8)
    labels = np.zeros((size,), np.int32)
    mask = np.zeros((size,), bool)
    images[: len(idx)], labels[: len(idx)] = gather(self.records, idx)
    mask[: len(idx)] = True
    return {
      'image': _per_device(images, d),
      'label': _per_device(labels, d),
      'mask': _per_device(mask, d),
    }


def balanced_indices(indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """`indices` with each class's repeated (cyclically) up to the largest class.

  An epoch of the labeled stream then holds every class equally often, and
  the per-epoch permutations do the rest: class-balanced sampling that keeps
  the stream a plain sequence of permutations.
  """
  classes, counts = np.unique(labels, return_counts=True)
  most = int(counts.max())
  return np.concatenate(
    [np.resize(indices[labels == c], most) for c in classes]
  )


def _read_options(config) -> grain.ReadOptions:
  # Batches are big: a short queue of whole batches, a few threads building them.
  return grain.ReadOptions(
    num_threads=int(config.data.get('num_threads', 2)),
    prefetch_buffer_size=int(config.data.get('prefetch_batches', 4)),
  )


def _check_positive_int(name, value):
  if (
    not isinstance(value, (int, np.integer))
    or isinstance(value, bool)
    or value <= 0
  ):
    raise DataError(f'{name}={value!r} is not valid: use a positive integer')


def make_train_iterator(
  source: Source,
  split,
  config,
  *,
  num_devices: int,
  process_index: int = 0,
  process_count: int = 1,
):
  """Endless train batches for this process (see the module doc for the format).

  Returns a grain DatasetIterator: `next(it)`, `it.get_state()` (a small
  JSON-serialisable dict) and `it.set_state(state)`.
  """
  _check_positive_int('batch_size', config.batch_size)
  _check_positive_int('num_devices', num_devices)
  _check_positive_int('process_count', process_count)
  uratio = config.uratio
  if not isinstance(uratio, (int, np.integer)) or uratio < 0:
    raise DataError(f'uratio={uratio!r} is not valid: use an integer >= 0')
  if not 0 <= process_index < process_count:
    raise DataError(
      f'process_index={process_index} is not in [0, {process_count})'
    )
  shards = num_devices * process_count
  if config.batch_size % shards:
    raise DataError(
      f'batch_size={config.batch_size} does not split over {num_devices} device(s) x '
      f'{process_count} process(es) = {shards}: use a multiple of {shards}'
    )
  labeled = np.asarray(split.labeled_indices, np.int64)
  if labeled.size == 0:
    raise DataError('the labeled split is empty: set data.num_labels > 0')
  sampling = config.data.labeled_sampling
  if sampling not in LABELED_SAMPLINGS:
    raise DataError(
      f'data.labeled_sampling={sampling!r} is not valid: use one of '
      f'{", ".join(LABELED_SAMPLINGS)}'
    )
  if sampling == 'balanced':
    labeled = balanced_indices(
      labeled, np.asarray(source.train.labels)[labeled]
    )
  step_fn = TrainBatchFn(
    train=source.train,
    extra=source.extra_unlabeled,
    labeled_indices=labeled,
    seed=int(config.seed),
    global_labeled=config.batch_size,
    global_unlabeled=config.batch_size * uratio,
    process_index=process_index,
    process_count=process_count,
    num_devices=num_devices,
    image_shape=tuple(source.image_shape),
  )
  ds = grain.MapDataset.range(_ENDLESS).map(step_fn)
  return iter(ds.to_iter_dataset(_read_options(config)))


def make_eval_iterator(
  source: Source,
  config,
  *,
  num_devices: int,
  split: str = 'test',
  process_index: int = 0,
  process_count: int = 1,
):
  """One pass over `split` ('test' or 'train'), every image exactly once.

  With several processes, process p takes batches p, p + P, ...; every process
  gets the same number of batches (fully masked ones at the end where needed),
  because each batch is one collective evaluation step over all processes.
  """
  _check_positive_int('eval_batch_size', config.eval_batch_size)
  _check_positive_int('num_devices', num_devices)
  if split not in ('test', 'train'):
    raise DataError(f'eval split {split!r} is not valid: use test or train')
  records = getattr(source, split)
  b = config.eval_batch_size
  fn = EvalBatchFn(
    records=records,
    batch_size=b,
    num_devices=num_devices,
    image_shape=tuple(source.image_shape),
  )
  if not 0 <= process_index < process_count:
    raise DataError(
      f'process_index={process_index} is not in [0, {process_count})'
    )
  num_batches = -(-len(records) // b)
  per_process = -(-num_batches // process_count)
  fn = dataclasses.replace(fn, stride=process_count, offset=process_index)
  ds = grain.MapDataset.range(per_process).map(fn)
  return iter(ds.to_iter_dataset(_read_options(config)))


def batch_images(batch: dict) -> int:
  """Images in a batch: all leading [D, b] of every *image array."""
  return sum(
    int(np.prod(v.shape[:2])) for k, v in batch.items() if k.endswith('image')
  )


def measure_throughput(iterator, num_batches: int = 50) -> float:
  """Images per second the iterator delivers, after one warm-up batch."""
  next(iterator)  # Thread start-up and first permutations are not throughput.
  images, start = 0, time.perf_counter()
  for _ in range(num_batches):
    try:
      batch = next(iterator)
    except StopIteration:
      break
    images += batch_images(batch)
  return images / max(time.perf_counter() - start, 1e-9)
