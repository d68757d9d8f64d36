"""What a run's data turned out to be: per-class counts, the unlabeled pool, and
what a folder loader ignored or skipped; printed before training and kept as
WORKDIR/data_summary.json.

  summary = describe(source, split)     # a JSON-ready dict
  print(format_summary(summary))

A practitioner's first question after pointing the trainer at a folder is "did
it see my images?"; this answers it before hours of training, and the JSON is
what tools (tools/predict.py) read the class names from.
"""

import numpy as np

from layermatch_jax.data.sources import Source

SUMMARY_FILE = 'data_summary.json'
MAX_PRINTED_CLASSES = 20  # Beyond this the table is in the JSON only.
MAX_PRINTED_FILES = (
  5  # Ignored/skipped files named on stdout; the JSON has all.
)


def describe(source: Source, split) -> dict:
  """The summary of `source` with the labeled `split` as a JSON-ready dict."""
  k = source.num_classes
  train_labels = np.asarray(source.train.labels)
  count = lambda labels: np.bincount(labels[labels >= 0], minlength=k)
  train = count(train_labels)
  labeled = count(train_labels[np.asarray(split.labeled_indices, np.int64)])
  test = count(np.asarray(source.test.labels))
  details = dict(source.details)
  test_from = details.pop(
    'test_from', 'test split' if len(source.test) else 'none'
  )
  summary = dict(
    dataset=source.name,
    class_names=list(source.class_names),
    image_size=int(source.image_shape[0]),
    image_shape=[int(s) for s in source.image_shape],
    classes=[
      dict(
        name=name,
        train=int(train[c]),
        labeled=int(labeled[c]),
        test=int(test[c]),
      )
      for c, name in enumerate(source.class_names)
    ],
    num_train=len(source.train),
    num_labeled=int(split.num_labels),
    num_test=len(source.test),
    num_extra_unlabeled=len(source.extra_unlabeled),
    # Every train image (labels hidden) plus the extra ones: what the
    # pseudo-label loss draws from (data.unlabeled_pool_size).
    unlabeled_pool_size=len(source.train) + len(source.extra_unlabeled),
    test_from=test_from,
    evaluation=len(source.test) > 0,
  )
  if 'dir' in details:
    summary['dir'] = details.pop('dir')
  if details.get('val_per_class') is not None:
    summary['val_per_class'] = details.pop('val_per_class')
  details.pop('val_per_class', None)
  for key in ('ignored_files', 'skipped_files'):
    if key in details:
      summary[key] = [
        dict(path=path, why=why) for path, why in details.pop(key)
      ]
  if 'stored_sizes' in details:
    summary['stored_image_sizes'] = details.pop('stored_sizes')
  summary.update(details)
  return summary


def _files_line(what: str, files: list) -> str:
  shown = ', '.join(
    f'{f["path"]} ({f["why"]})' for f in files[:MAX_PRINTED_FILES]
  )
  more = (
    f', and {len(files) - MAX_PRINTED_FILES} more'
    if len(files) > MAX_PRINTED_FILES
    else ''
  )
  return (
    f'  {what} {len(files)} file{"s" if len(files) != 1 else ""}: {shown}{more}'
  )


def format_summary(summary: dict) -> str:
  """The summary as a short block of text for stdout."""
  where = f' {summary["dir"]}' if 'dir' in summary else ''
  size = summary['image_size']
  lines = [
    f'Data: {summary["dataset"]}{where}, {len(summary["classes"])} classes, images '
    f'resized to {size}x{size}'
  ]
  classes = summary['classes']
  width = max([len('class'), len('total')] + [len(c['name']) for c in classes])
  row = lambda name, a, b, c: f'  {name:<{width}}  {a:>7}  {b:>7}  {c:>7}'
  lines.append(row('class', 'train', 'labeled', 'test'))
  for c in classes[:MAX_PRINTED_CLASSES]:
    lines.append(row(c['name'], c['train'], c['labeled'], c['test']))
  if len(classes) > MAX_PRINTED_CLASSES:
    lines.append(
      f'  ... {len(classes) - MAX_PRINTED_CLASSES} more classes (data_summary.json)'
    )
  lines.append(
    row(
      'total', summary['num_train'], summary['num_labeled'], summary['num_test']
    )
  )
  lines.append(
    f'  unlabeled: {summary["num_extra_unlabeled"]} extra images; pool without '
    f'labels {summary["unlabeled_pool_size"]} (every train image + the extra ones)'
  )
  test_from = summary['test_from']
  if not summary['evaluation']:
    lines.append(
      '  evaluation: NONE (no test images: no test/ folder and '
      'data.val_per_class=0); no accuracy will be reported'
    )
  elif test_from == 'held out from train/':
    lines.append(
      f'  test: {summary["num_test"]} labeled images held out from train/ '
      f'(no test/ folder; data.val_per_class={summary["val_per_class"]}, the same '
      'images for every seed); they are not trained on'
    )
  else:
    lines.append(f'  test: from {test_from}')
  sizes = summary.get('stored_image_sizes')
  if sizes:
    shown = ', '.join(f'{s} ({n})' for s, n in list(sizes.items())[:3])
    more = f', {len(sizes) - 3} other sizes' if len(sizes) > 3 else ''
    lines.append(f'  stored image sizes: {shown}{more}')
  if summary.get('ignored_files'):
    lines.append(_files_line('ignored', summary['ignored_files']))
  if summary.get('skipped_files'):
    lines.append(_files_line('skipped (unreadable)', summary['skipped_files']))
  return '\n'.join(lines)
