"""Data: sources (datasets), labeled splits, and the host input pipeline.

Names are imported on first use (PEP 562): importing a submodule, e.g. in a
decoding worker process, then costs neither grain's nor TFDS's import time.
"""

import importlib

_EXPORTS = {
    'ArrayRecords': 'sources', 'DataError': 'sources', 'LazyRecords': 'sources',
    'load_source': 'sources', 'Source': 'sources', 'SOURCE_NAMES': 'sources',
    'get_split': 'splits', 'load_split': 'splits', 'make_split': 'splits',
    'save_split': 'splits', 'labeled_count': 'splits', 'describe': 'summary',
    'format_summary': 'summary', 'SUMMARY_FILE': 'summary', 'Split': 'splits', 'split_path': 'splits',
    'batch_images': 'pipeline', 'make_eval_iterator': 'pipeline',
    'make_train_iterator': 'pipeline', 'measure_throughput': 'pipeline',
    'unlabeled_pool_size': 'pipeline',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
