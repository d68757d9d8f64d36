"""Data: sources (datasets), labeled splits, and the host input pipeline.

Names are imported on first use (PEP 562): importing a submodule, e.g. in a
decoding worker process, then costs neither grain's nor TFDS's import time.
"""

import importlib

_EXPORTS = {
  'ArrayRecords': 'sources',
  'DataError': 'sources',
  'LazyRecords': 'sources',
  'Source': 'sources',
  'get_split': 'splits',
  'load_split': 'splits',
  'make_split': 'splits',
  'save_split': 'splits',
  'labeled_count': 'splits',
  'describe': 'summary',
  'format_summary': 'summary',
  'SUMMARY_FILE': 'summary',
  'Split': 'splits',
  'split_path': 'splits',
  'batch_images': 'pipeline',
  'make_eval_iterator': 'pipeline',
  'make_train_iterator': 'pipeline',
  'measure_throughput': 'pipeline',
  'unlabeled_pool_size': 'pipeline',
}
__all__ = sorted([*_EXPORTS, 'LOADERS', 'SOURCE_NAMES', 'load_source'])

# data.name -> (module, function) that builds its Source. A new dataset is a
# module with a loader plus a line here. Loaders are imported on use, so the
# digits demo never imports tensorflow_datasets.
LOADERS = {
  'cifar10': ('tfds_sources', 'load_tfds_source'),
  'cifar100': ('tfds_sources', 'load_tfds_source'),
  'stl10': ('tfds_sources', 'load_tfds_source'),
  'imagenet100': ('tfds_sources', 'load_tfds_source'),
  'folder': ('folder', 'load_folder_source'),
  'digits': ('digits', 'load_digits_source'),
}
SOURCE_NAMES = tuple(LOADERS)  # Valid data.name values.


def load_source(data_config):
  """Builds the `Source` named by `data_config.name` (see LOADERS)."""
  from layermatch_jax.data.sources import DataError  # pylint: disable=g-import-not-at-top

  name = data_config.name
  size = data_config.get('image_size', None)
  if not isinstance(size, int) or size <= 0:
    raise DataError(
      f'data.image_size={size!r} is not valid: use a positive int, e.g. 32'
    )
  if name not in LOADERS:
    raise DataError(
      f'data.name={name!r} is not a known dataset: use one of '
      f'{", ".join(SOURCE_NAMES)}'
    )
  module, function = LOADERS[name]
  return getattr(importlib.import_module(f'{__name__}.{module}'), function)(
    data_config
  )


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(
      importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name
    )
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
