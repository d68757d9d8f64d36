"""Class-balanced labeled splits of the train pool, drawn from a seed, saved as JSON.

Standard SSL protocol: the labeled images are `num_labels / num_classes` per
class. `num_labels='all'` labels every train image instead, whatever the
per-class counts (a practitioner's folder: every photo under train/<class>/ was
labeled by hand). The unlabeled pool is *all* train images (the labeled ones included,
their labels hidden) plus the source's extra unlabeled images. A split file
names the dataset and a fingerprint of its train labels, so a file made for
other data is refused instead of silently training on the wrong images.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np

from layermatch_jax import cli_util
from layermatch_jax.data.sources import DataError
from layermatch_jax.data.sources import Source

SPLIT_FORMAT = 1
ALL = 'all'  # data.num_labels: every train image is labeled.
VALID_NUM_LABELS = (
  f"a positive multiple of the class count, or '{ALL}' (every train image)"
)


def labeled_count(source: Source, num_labels) -> int:
  """How many labeled images `num_labels` asks for from `source`."""
  if num_labels == ALL:
    return int(np.sum(np.asarray(source.train.labels) >= 0))
  return int(num_labels)


@dataclasses.dataclass(frozen=True)
class Split:
  dataset: str
  num_classes: int
  pool_size: int  # Train pool size when the split was drawn.
  num_labels: int
  seed: int
  fingerprint: str  # See `fingerprint(source)`.
  labeled_indices: np.ndarray  # int64, sorted, into source.train.


def fingerprint(source: Source) -> str:
  """A short hash of what the indices refer to: classes and train labels."""
  h = hashlib.sha256()
  h.update(
    json.dumps(
      [
        source.name,
        source.num_classes,
        list(source.class_names),
        len(source.train),
      ]
    ).encode()
  )
  h.update(np.asarray(source.train.labels, '<i4').tobytes())
  return h.hexdigest()[:16]


def make_split(source: Source, num_labels, seed: int) -> Split:
  """Draws `num_labels / num_classes` train images per class from `seed`.

  `num_labels='all'` labels every train image with a label instead (as many
  per class as there are; the seed plays no part).
  """
  labels = np.asarray(source.train.labels)
  k = source.num_classes
  if num_labels == ALL:
    indices = np.flatnonzero(labels >= 0).astype(np.int64)
    if not indices.size:
      raise DataError(
        f"data.num_labels='{ALL}' but {source.name} has no labeled train images"
      )
  elif (
    not isinstance(num_labels, (int, np.integer))
    or isinstance(num_labels, bool)
    or num_labels <= 0
  ):
    raise DataError(
      f'data.num_labels={num_labels!r} is not valid: use {VALID_NUM_LABELS}'
    )
  else:
    if num_labels % k:
      raise DataError(
        f'data.num_labels={num_labels} is not divisible by the {k} classes of '
        f'{source.name}: use a multiple of {k}, e.g. {max(k, num_labels // k * k)}'
      )
    per_class = num_labels // k
    counts = np.bincount(labels[labels >= 0], minlength=k)
    short = np.flatnonzero(counts < per_class)
    if short.size:
      c = int(short[0])
      raise DataError(
        f'data.num_labels={num_labels} asks for {per_class} labels per class but '
        f'class {c} ({source.class_names[c]}) of {source.name} has only '
        f'{counts[c]} train images: use at most {int(counts.min()) * k} labels'
      )
    rng = np.random.default_rng(np.random.SeedSequence([_u32(seed), 0x5917]))
    indices = np.concatenate(
      [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(k)
      ]
    ).astype(np.int64)
  return Split(
    dataset=source.name,
    num_classes=k,
    pool_size=len(labels),
    num_labels=int(len(indices)),
    seed=int(seed),
    fingerprint=fingerprint(source),
    labeled_indices=np.sort(indices),
  )


def _u32(seed) -> int:
  return int(seed) % 2**32  # SeedSequence wants non-negative entropy.


def split_path(workdir: str) -> str:
  """Where the trainer keeps the run's split."""
  return os.path.join(workdir, 'splits', 'split.json')


def save_split(path: str, split: Split) -> None:
  """Writes `split` as JSON, atomically (a crash leaves the old file intact)."""
  record = {
    'format': SPLIT_FORMAT,
    'dataset': split.dataset,
    'num_classes': split.num_classes,
    'pool_size': split.pool_size,
    'num_labels': split.num_labels,
    'seed': split.seed,
    'fingerprint': split.fingerprint,
    'labeled_indices': [int(i) for i in split.labeled_indices],
  }
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  cli_util.write_json(path, record)


def load_split(path: str, source: Source) -> Split:
  """Reads a split file and checks that it was made for `source`."""
  try:
    with open(path) as f:
      record = json.load(f)
    split = Split(
      dataset=str(record['dataset']),
      num_classes=int(record['num_classes']),
      pool_size=int(record['pool_size']),
      num_labels=int(record['num_labels']),
      seed=int(record['seed']),
      fingerprint=str(record['fingerprint']),
      labeled_indices=np.asarray(record['labeled_indices'], np.int64).reshape(
        -1
      ),
    )
  except FileNotFoundError as e:
    raise DataError(
      f'data.split_file={path} does not exist: give a split.json '
      'written by an earlier run (WORKDIR/splits/split.json)'
    ) from e
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(
      f'data.split_file={path} is not a valid split file '
      f'({type(e).__name__}: {e}); expected WORKDIR/splits/split.json '
      'of an earlier run'
    ) from e
  if split.dataset != source.name or split.fingerprint != fingerprint(source):
    raise DataError(
      f'data.split_file={path} was made for dataset {split.dataset} '
      f'({split.num_classes} classes, {split.pool_size} train images, fingerprint '
      f'{split.fingerprint}), not for this {source.name} ({source.num_classes} '
      f'classes, {len(source.train)} train images, fingerprint {fingerprint(source)})'
    )
  idx = split.labeled_indices
  if (
    len(idx) != split.num_labels
    or len(np.unique(idx)) != len(idx)
    or (idx.size and (idx.min() < 0 or idx.max() >= len(source.train)))
  ):
    raise DataError(
      f'data.split_file={path} is corrupt: its {len(idx)} labeled indices '
      f'must be {split.num_labels} distinct values in [0, {len(source.train)})'
    )
  return split


def get_split(source: Source, config) -> Split:
  """The run's split: data.split_file if set, else drawn from config.seed."""
  split_file = config.data.get('split_file', None)
  num_labels = config.data.get('num_labels', None)
  if not split_file:
    return make_split(source, num_labels, config.seed)
  split = load_split(split_file, source)
  if (
    num_labels is not None
    and labeled_count(source, num_labels) != split.num_labels
  ):
    raise DataError(
      f'data.split_file={split_file} has {split.num_labels} labels but '
      f'data.num_labels={num_labels!r} asks for {labeled_count(source, num_labels)}: set '
      f'--config.data.num_labels={split.num_labels} or drop data.split_file'
    )
  return split
