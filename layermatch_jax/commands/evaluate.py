"""Evaluates a saved checkpoint of a training workdir; writes a confusion matrix.

  layermatch-evaluate --workdir=/tmp/demo        # or: python tools/evaluate.py ...
  layermatch-evaluate --workdir=/tmp/demo --step=500 --split=train --out=/tmp/cm.png

Rebuilds the run's config from WORKDIR/config.json, restores the checkpoint
(latest, or --step) and evaluates its EMA parameters exactly as the training loop
does. Prints one JSON object on stdout:

  {"step", "split", "top1", "loss", "count", "per_class_accuracy": {name: acc},
   "confusion_matrix_png": path}

and writes the row-normalised confusion matrix as a PNG (default
WORKDIR/confusion_step<N>.png; WORKDIR/confusion_train_step<N>.png for
--split=train). Bad input ends with one line `error: ...` on stderr, exit
status 2, and nothing written.
"""

import contextlib
import json
import os
import sys
from typing import Optional

from layermatch_jax import cli_util
from layermatch_jax import saved_run

# Cell text above this many classes would be unreadable.
MAX_ANNOTATED_CLASSES = 20


def default_out(workdir: str, step: int, split: str) -> str:
  name = (
    f'confusion_step{step}.png'
    if split == 'test'
    else f'confusion_{split}_step{step}.png'
  )
  return os.path.join(workdir, name)


def confusion_matrix(labels, predictions, num_classes: int):
  """Counts [true class, predicted class]."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  flat = np.asarray(labels, np.int64) * num_classes + np.asarray(
    predictions, np.int64
  )
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(
    num_classes, num_classes
  )


def plot_confusion(cm, class_names, path: str, title: str):
  """Row-normalised matrix (rows: true class); cells annotated for few classes."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')  # No display: tools run on servers.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  k = len(class_names)
  totals = cm.sum(1, keepdims=True)
  norm = cm / np.maximum(totals, 1)  # Classes absent from the split stay 0.
  # Cells shrink with many classes, down to what a tick label can still name.
  side = max(4.0, 0.45 * k + 2.0) if k <= 20 else min(0.2 * k + 4.0, 24.0)
  font = max(4.0, min(9.0, 0.6 * (side - 2.0) * 72.0 / max(k, 1)))
  fig, ax = plt.subplots(figsize=(side + 1.0, side))
  im = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(
    im, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class'
  )
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  # Names longer than a cell is wide would overlap unless turned.
  if k > 20:
    ax.set_xticklabels(class_names, rotation=90, fontsize=font)
  elif max(len(n) for n in class_names) > 3:
    ax.set_xticklabels(
      class_names,
      rotation=45,
      ha='right',
      rotation_mode='anchor',
      fontsize=font,
    )
  else:
    ax.set_xticklabels(class_names, fontsize=font)
  ax.set_yticklabels(class_names, fontsize=font)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  ax.set_title(title, fontsize=10 if k <= 20 else 14)
  if k <= MAX_ANNOTATED_CLASSES:
    for i in range(k):
      for j in range(k):
        if cm[i, j] == 0:
          continue
        ax.text(
          j,
          i,
          f'{100 * norm[i, j]:.0f}%\n{cm[i, j]}',
          ha='center',
          va='center',
          fontsize=font * 0.8,
          color='white' if norm[i, j] > 0.5 else 'black',
        )
  fig.tight_layout()
  with cli_util.atomic_write(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def evaluate(
  workdir: str,
  step: Optional[int] = None,
  split: str = 'test',
  out: Optional[str] = None,
  notes: Optional[list] = None,
) -> dict:
  """Evaluates WORKDIR's checkpoint at `step` (default latest); writes the PNG.

  Returns the dict the command line prints. Raises ToolError on bad input,
  before anything is written. Remarks for the user are appended to `notes`.
  """
  if split not in ('test', 'train'):
    raise cli_util.ToolError(f'--split={split} is not valid: use test or train')
  try:
    config = saved_run.load_config(workdir, notes)
    if out is not None:
      out_dir = os.path.dirname(os.path.abspath(out))
      if not os.path.isdir(out_dir):
        raise cli_util.ToolError(
          f'--out={out}: directory {out_dir} does not exist'
        )
    step = saved_run.resolve_step(
      workdir, step
    )  # Before the data is read: a quick answer.
    run = saved_run.SavedRun(workdir, config=config)
    state, step = run.restore(step)
  except saved_run.RunError as e:
    raise cli_util.ToolError(str(e)) from e
  from layermatch_jax import data, evaluation  # pylint: disable=g-import-not-at-top

  source = run.source
  result = evaluation.evaluate_dataset(
    run.learner,
    state,
    data.make_eval_iterator(
      source, run.config, num_devices=run.learner.num_devices, split=split
    ),
    return_predictions=True,
  )

  k = source.num_classes
  cm = confusion_matrix(result['labels'], result['predictions'], k)
  totals = cm.sum(1)
  per_class = {
    name: (float(cm[c, c] / totals[c]) if totals[c] else None)
    for c, name in enumerate(source.class_names)
  }
  out = os.path.abspath(out or default_out(workdir, step, split))
  plot_confusion(
    cm,
    list(source.class_names),
    out,
    f'{os.path.basename(os.path.abspath(workdir))} step {step}, {split} '
    f'({result["count"]} images): top1 {result["top1"]:.4f}',
  )
  return {
    'step': int(step),
    'split': split,
    'top1': float(result['top1']),
    'loss': float(result['loss']),
    'count': int(result['count']),
    'per_class_accuracy': per_class,
    'confusion_matrix_png': out,
  }


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--workdir', required=True, help='A training workdir.')
  parser.add_argument(
    '--step',
    type=int,
    default=None,
    help='Checkpoint step (default: the latest saved).',
  )
  parser.add_argument(
    '--split',
    default='test',
    choices=('test', 'train'),
    help='Which split to evaluate.',
  )
  parser.add_argument(
    '--out',
    default=None,
    help='PNG path (default WORKDIR/confusion_step<N>.png).',
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top

  # orbax logs every restore at INFO.
  logging.set_verbosity(logging.WARNING)
  notes = []
  # stdout carries only the JSON object: anything printed on the way goes to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    result = evaluate(args.workdir, args.step, args.split, args.out, notes)
  # Printed only on success: notes would break the one-line error contract.
  for note in notes:
    print(note, file=sys.stderr)
  print(json.dumps(result, indent=2))


def run(argv=None):
  """`layermatch-evaluate`: main with bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
