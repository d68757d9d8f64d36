"""TFDS datasets read with `tfds.data_source` (array_record; no TensorFlow needed).

- cifar10, cifar100 (fine labels), stl10 (its 100k `unlabelled` images become
  `extra_unlabeled`) are decoded once into memory.
- imagenet100 is TFDS `imagenet2012` restricted to the 100 classes of CMC
  (IMAGENET100_WNIDS); the validation split is its test set. Images are decoded
  and resized on every access. Which records belong to the 100 classes is
  found once, by `build_imagenet100_index`, and stored next to the data
  (DIR/imagenet100/index.npz), because finding them means reading all 1.3M
  records.

Nothing is ever downloaded unless data.download=True: offline, TFDS retries for
minutes. Preparing data (tools/prepare_data.py, or data.download=True) needs
TensorFlow: `pip install tensorflow-cpu`.
"""

import contextlib
import os
import time

from absl import logging
import numpy as np

from layermatch_jax import cli_util
from layermatch_jax.data import sources

# data.name -> (TFDS name, train split, test split, extra unlabeled split).
TFDS_SPLITS = {
  'cifar10': ('cifar10', 'train', 'test', None),
  'cifar100': ('cifar100', 'train', 'test', None),
  'stl10': ('stl10', 'train', 'test', 'unlabelled'),
  'imagenet100': ('imagenet2012', 'train', 'validation', None),
}

# ImageNet-100: the 100 ImageNet-1k classes (WordNet ids) chosen at random by
# Tian, Krishnan & Isola, "Contrastive Multiview Coding" (CMC, ECCV 2020), as
# listed in imagenet100.txt of their code release (github.com/HobbitLong/CMC);
# the subset used by most SSL papers that report "ImageNet-100". Labels are the
# positions in the sorted list.
IMAGENET100_WNIDS = tuple(
  sorted(
    """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890
n03062245 n01773797 n01735189 n07831146 n07753275 n03085013 n04485082 n02105505
n01983481 n02788148 n03530642 n04435653 n02086910 n02859443 n13040303 n03594734
n02085620 n02099849 n01558993 n04493381 n02109047 n04111531 n02877765 n04429376
n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251
n02701002 n03379051 n02259212 n07715103 n03947888 n04026417 n02326432 n03637318
n01980166 n02113799 n02086240 n03903868 n02483362 n04127249 n02089973 n03017168
n02093428 n02804414 n02396427 n04418357 n02172182 n01729322 n02113978 n03787032
n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630
n03584829 n02123045 n04229816 n02100583 n03642806 n04336792 n03259280 n02116738
n02108089 n03424325 n01855672 n02090622
""".split()
  )
)
assert len(set(IMAGENET100_WNIDS)) == 100

INDEX_VERSION = 1


def data_dir_or_default(data_dir) -> str:
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.path.expanduser(
    os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')
  )


def prepare_command(name: str, data_dir: str, manual_dir: bool = True) -> str:
  command = (
    f'python tools/prepare_data.py --dataset={name} --data_dir={data_dir}'
  )
  if manual_dir and name in ('imagenet100', 'imagenet2012'):
    command += ' --manual_dir=DIR_WITH_ILSVRC2012_TARS'
  return command


def _not_prepared(name: str, data_dir: str, why: str) -> sources.DataError:
  return sources.DataError(
    f'dataset {name}: {why} in {data_dir}; prepare it (needs pip install '
    f'tensorflow-cpu) with: {prepare_command(name, data_dir)}'
  )


def _no_index(data_dir: str, why: str) -> sources.DataError:
  return sources.DataError(
    f'dataset imagenet100: {why} (imagenet2012 itself is prepared in {data_dir}); '
    f'build it with: {prepare_command("imagenet100", data_dir, manual_dir=False)}'
  )


@contextlib.contextmanager
def _tfds_warnings_off():
  """TFDS logs a warning for each unprepared version folder it looks into; the
  DataError raised after it says the same and how to fix it, in one line."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def open_split(name: str, split: str, data_dir: str, decoders=None):
  """`tfds.data_source` for one split, without any download; DataError if absent."""
  import tensorflow_datasets as tfds  # Heavy import, only for TFDS datasets.

  tfds_name = TFDS_SPLITS[name][0] if name in TFDS_SPLITS else name
  try:
    with _tfds_warnings_off():
      return tfds.data_source(
        tfds_name,
        split=split,
        data_dir=data_dir,
        download=False,
        decoders=decoders,
      )
  except Exception as e:  # pylint: disable=broad-except
    # TFDS raises NotImplementedError, AssertionError, FileNotFoundError, ...
    why = f'no prepared {tfds_name} data (split {split}, array_record format)'
    try:
      with _tfds_warnings_off():
        builder_dir = tfds.builder(tfds_name, data_dir=data_dir).data_dir
      if os.path.exists(os.path.join(builder_dir, 'dataset_info.json')):
        why = (
          f'{tfds_name} at {builder_dir} cannot be read as array_record '
          f'({type(e).__name__}; maybe prepared as TFRecord: delete it first)'
        )
    except Exception:  # pylint: disable=broad-except
      pass
    raise _not_prepared(name, data_dir, why) from e


def _read_all(ds, size: int, label_key: str = 'label') -> sources.ArrayRecords:
  """Decodes a whole TFDS split into memory, in parallel."""
  n = len(ds)
  images = np.empty((n, size, size, 3), np.uint8)
  labels = np.empty((n,), np.int32)

  def read(i):
    example = ds[i]
    images[i] = sources.resize_array(example['image'], size)
    labels[i] = int(example[label_key])

  list(sources.decode_pool().map(read, range(n)))
  return sources.ArrayRecords(images, labels)


def _label_names(name: str, data_dir: str) -> tuple[str, ...]:
  import tensorflow_datasets as tfds

  return tuple(
    tfds.builder(TFDS_SPLITS[name][0], data_dir=data_dir)
    .info.features['label']
    .names
  )


def prepare(name: str, data_dir: str, manual_dir=None) -> None:
  """Downloads and prepares `name` as array_record (needs TensorFlow)."""
  data_dir = data_dir_or_default(data_dir)
  if name == 'imagenet100':
    try:  # Already prepared ImageNet: only the index is missing (no TF needed).
      open_split(name, 'validation', data_dir)
    except sources.DataError:
      prepare('imagenet2012', data_dir, manual_dir)
    build_imagenet100_index(data_dir)
    return
  tfds_name = TFDS_SPLITS[name][0] if name in TFDS_SPLITS else name
  try:
    import tensorflow  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel
  except ImportError as e:
    raise sources.DataError(
      f'preparing {tfds_name} needs TensorFlow, which is not installed: '
      'pip install tensorflow-cpu'
    ) from e
  import tensorflow_datasets as tfds

  config = (
    tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  )
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  builder.download_and_prepare(
    download_config=config, file_format='array_record'
  )


def load_tfds_source(data_config) -> sources.Source:
  name = data_config.name
  size = data_config.image_size
  data_dir = data_dir_or_default(data_config.get('dir', None))
  if data_config.get('download', False):
    try:
      open_split(name, TFDS_SPLITS[name][1], data_dir)
      ready = name != 'imagenet100' or os.path.exists(index_path(data_dir))
    except sources.DataError:
      ready = False
    if not ready:
      logging.info('Preparing %s in %s (data.download=True).', name, data_dir)
      prepare(name, data_dir, data_config.get('manual_dir', None))
  if name == 'imagenet100':
    return _load_imagenet100(data_dir, size)
  _, train_split, test_split, extra_split = TFDS_SPLITS[name]
  start = time.time()
  train = _read_all(open_split(name, train_split, data_dir), size)
  test = _read_all(open_split(name, test_split, data_dir), size)
  if extra_split:
    extra = _read_all(open_split(name, extra_split, data_dir), size)
    extra.labels[:] = -1  # Unlabelled by definition, whatever the file says.
  else:
    extra = sources.empty_records((size, size, 3))
  class_names = _label_names(name, data_dir)
  logging.info(
    '%s from %s: %d train, %d test, %d extra unlabeled (%.1fs).',
    name,
    data_dir,
    len(train),
    len(test),
    len(extra),
    time.time() - start,
  )
  return sources.Source(
    name=name,
    num_classes=len(class_names),
    class_names=class_names,
    image_shape=(size, size, 3),
    train=train,
    test=test,
    extra_unlabeled=extra,
  )


# --- ImageNet-100 -------------------------------------------------------------


def index_path(data_dir: str) -> str:
  return os.path.join(data_dir, 'imagenet100', 'index.npz')


def imagenet100_label_map(wnids_1k) -> np.ndarray:
  """imagenet2012 label -> ImageNet-100 label, -1 for the other 900 classes."""
  position = {w: k for k, w in enumerate(IMAGENET100_WNIDS)}
  mapping = np.array([position.get(w, -1) for w in wnids_1k], np.int32)
  if (mapping >= 0).sum() != 100:
    raise sources.DataError(
      f'imagenet2012 label names contain {(mapping >= 0).sum()} of the 100 '
      'ImageNet-100 classes, expected all 100: is this the ILSVRC2012 dataset?'
    )
  return mapping


def _read_labels(ds) -> np.ndarray:
  labels = np.empty((len(ds),), np.int32)

  def read(i):
    labels[i] = int(ds[i]['label'])

  list(sources.decode_pool().map(read, range(len(ds))))
  return labels


def build_imagenet100_index(
  data_dir: str, *, skip_image_decoding: bool = True
) -> str:
  """Finds the ImageNet-100 records of a prepared imagenet2012; writes index.npz.

  Reads every record once (images are not decoded). Returns the index path.
  """
  import tensorflow_datasets as tfds

  data_dir = data_dir_or_default(data_dir)
  decoders = (
    {'image': tfds.decode.SkipDecoding()} if skip_image_decoding else None
  )
  mapping = imagenet100_label_map(_label_names('imagenet100', data_dir))
  arrays = {
    'version': np.int64(INDEX_VERSION),
    'wnids': np.array(IMAGENET100_WNIDS),
  }
  for split in ('train', 'validation'):
    start = time.time()
    ds = open_split('imagenet100', split, data_dir, decoders=decoders)
    labels = mapping[_read_labels(ds)]
    keys = np.flatnonzero(labels >= 0)
    arrays[f'{split}_keys'] = keys.astype(np.int64)
    arrays[f'{split}_labels'] = labels[keys]
    arrays[f'{split}_size'] = np.int64(len(ds))
    logging.info(
      'ImageNet-100 %s: %d of %d records (%.0fs).',
      split,
      len(keys),
      len(ds),
      time.time() - start,
    )
  path = index_path(data_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with cli_util.atomic_write(path, 'wb') as f:
    np.savez(f, **arrays)
  return path


class _ReadTfds:
  """Thread-safe reader: one TFDS record -> uint8 [size, size, 3]."""

  def __init__(self, ds, size: int):
    self.ds, self.size = ds, size

  def __call__(self, key):
    return sources.resize_array(self.ds[int(key)]['image'], self.size)


def _load_imagenet100(data_dir: str, size: int) -> sources.Source:
  splits = {
    s: open_split('imagenet100', s, data_dir) for s in ('train', 'validation')
  }
  path = index_path(data_dir)
  if not os.path.exists(path):
    raise _no_index(data_dir, f'the ImageNet-100 index {path} is missing')
  with np.load(path) as index:
    index = dict(index)
  stale = [s for s in splits if int(index[f'{s}_size']) != len(splits[s])]
  if int(index['version']) != INDEX_VERSION or stale:
    raise _no_index(data_dir, f'the ImageNet-100 index {path} is out of date')
  records = {
    s: sources.LazyRecords(
      _ReadTfds(splits[s], size),
      index[f'{s}_keys'],
      index[f'{s}_labels'],
      (size, size, 3),
    )
    for s in splits
  }
  return sources.Source(
    name='imagenet100',
    num_classes=100,
    class_names=IMAGENET100_WNIDS,
    image_shape=(size, size, 3),
    train=records['train'],
    test=records['validation'],
    extra_unlabeled=sources.empty_records((size, size, 3)),
  )
