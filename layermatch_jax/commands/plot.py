"""Plots training curves of one or more workdirs into one PNG, to compare runs.

  layermatch-plot /tmp/demo                       # or: python tools/plot.py ...
  layermatch-plot /tmp/fixmatch /tmp/layermatch --labels=FixMatch,LayerMatch --out=/tmp/c.png

Reads each WORKDIR/metrics.jsonl. One panel per metric: eval top1, the train
losses (loss_sup, loss_unsup, loss_cluster), mask_ratio and pseudo_label_acc,
each against the step, one line per run. Metrics no run logged are left out;
null values (undefined that step) are skipped. Prints the path written on
stdout. Default --out: WORKDIR/curves.png for one run, curves.png in the
current directory for several; without --out a note on stderr says so.
Bad input ends with one line `error: ...` on stderr and exit status 2.
"""

import json
import os
import sys

from layermatch_jax import cli_util
from layermatch_jax import metrics as metrics_lib

# (split, metric, panel title), in panel order.
PANELS = (
  ('eval', 'top1', 'eval top1'),
  ('train', 'loss_sup', 'train loss_sup'),
  ('train', 'loss_unsup', 'train loss_unsup'),
  ('train', 'loss_cluster', 'train loss_cluster'),
  ('train', 'mask_ratio', 'train mask_ratio'),
  ('train', 'pseudo_label_acc', 'train pseudo_label_acc'),
)
DEFAULT_NAME = 'curves.png'


def run_label(workdir: str) -> str:
  """The dir's basename plus its algorithm, when config.json says."""
  name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      algorithm = json.load(f).get('algorithm')
  except (OSError, ValueError, AttributeError):
    algorithm = None  # The curves are still worth plotting without it.
  return f'{name} ({algorithm})' if algorithm else name


def read_run(workdir: str) -> list:
  if not os.path.isdir(workdir):
    raise cli_util.ToolError(
      f'{workdir} is not a directory: give training workdirs'
    )
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  if not os.path.isfile(path):
    raise cli_util.ToolError(
      f'{path} does not exist: give workdirs written by layermatch_jax.main'
    )
  try:
    return metrics_lib.read_metrics(workdir)
  except (OSError, ValueError, KeyError) as e:
    raise cli_util.ToolError(f'{path} is not a metrics log: {e}') from e


def default_out(workdirs) -> str:
  """WORKDIR/curves.png for one run; curves.png in the current directory for several."""
  return os.path.join(workdirs[0] if len(workdirs) == 1 else '.', DEFAULT_NAME)


def series(records, split: str, name: str):
  """(steps, values) of `name` in `split`, without nulls, sorted by step."""
  points = sorted(
    (r['step'], r[name])
    for r in records
    if r.get('split') == split and r.get(name) is not None
  )
  return [p[0] for p in points], [p[1] for p in points]


def plot(workdirs, labels=None, out=None) -> str:
  """Writes the PNG (default: default_out); returns its absolute path.

  Raises ToolError on bad input, before anything is written.
  """
  if not workdirs:
    raise cli_util.ToolError('give at least one workdir')
  if labels is not None and len(labels) != len(workdirs):
    raise cli_util.ToolError(
      f'--labels has {len(labels)} names for {len(workdirs)} '
      'workdirs: give one per workdir, comma-separated'
    )
  runs = [read_run(w) for w in workdirs]
  labels = labels or [run_label(w) for w in workdirs]
  out = os.path.abspath(default_out(workdirs) if out is None else out)
  if not os.path.isdir(os.path.dirname(out)):
    raise cli_util.ToolError(
      f'--out={out}: directory {os.path.dirname(out)} does not exist'
    )

  panels = []
  for split, name, title in PANELS:
    lines = [
      (i, labels[i], *series(records, split, name))
      for i, records in enumerate(runs)
    ]
    lines = [line for line in lines if line[2]]
    if lines:
      panels.append((title, name, lines))
  if not panels:
    raise cli_util.ToolError(
      f'no eval top1 or train losses logged in {", ".join(workdirs)}'
    )

  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')  # No display: tools run on servers.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top

  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(
    rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False
  )
  for ax, (title, name, lines) in zip(axes.flat, panels):
    for i, label, steps, values in lines:
      ax.plot(
        steps,
        values,
        color=f'C{i % 10}',
        label=label,
        marker='o' if len(steps) < 30 else None,
        markersize=3,
      )
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if name in ('top1', 'mask_ratio', 'pseudo_label_acc'):
      ax.set_ylim(-0.02, 1.02)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis('off')
  # One legend for the figure: a run keeps its colour in every panel.
  handles = [
    Line2D([], [], color=f'C{i % 10}', marker='o', markersize=3)
    for i in range(len(labels))
  ]
  fig.legend(
    handles,
    labels,
    loc='upper center',
    ncol=min(len(labels), 4),
    fontsize=9,
    frameon=False,
  )
  fig.tight_layout(
    rect=(0, 0, 1, 1 - 0.3 * (-(-len(labels) // 4)) / fig.get_figheight())
  )
  with cli_util.atomic_write(out, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
  return out


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument(
    'workdirs', nargs='+', metavar='DIR', help='Training workdirs.'
  )
  parser.add_argument(
    '--out',
    default=None,
    help=f'PNG path to write (default: DIR/{DEFAULT_NAME} for one DIR, '
    f'./{DEFAULT_NAME} for several).',
  )
  parser.add_argument(
    '--labels', default=None, help='Comma-separated legend names, one per DIR.'
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  args = parse_args(argv)
  labels = args.labels.split(',') if args.labels is not None else None
  out = plot(args.workdirs, labels, args.out)
  if args.out is None:
    default = (
      f'DIR/{DEFAULT_NAME}'
      if len(args.workdirs) == 1
      else f'./{DEFAULT_NAME} in the current directory for several DIRs'
    )
    print(
      f'note: no --out given: wrote {out} (default {default}; choose with --out)',
      file=sys.stderr,
    )
  print(out)


def run(argv=None):
  """`layermatch-plot`: main with bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
