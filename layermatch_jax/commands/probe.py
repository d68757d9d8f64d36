"""Layer-wise probe of a training workdir's checkpoint: features apart from the head.

  layermatch-probe --workdir=/tmp/demo             # or: python tools/probe.py ...
  layermatch-probe --workdir=/tmp/demo --step=500 --json=/tmp/probe.json
  layermatch-probe --workdir=/tmp/demo --step=all  # every kept checkpoint

Prints one JSON object a line on stdout (one line per step), with
  head_top1, probe_top1, probe_labeled_top1, knn_top1, centre_top1,
  head_probe_gap = probe_top1 - head_top1, head_labeled_probe_gap, ...
as layermatch_jax/probe.py defines them (EMA parameters, un-augmented images, a
logistic-regression probe with a fixed C, kNN with k = 20 by cosine). --json
also writes those lines to a file. The workdir is only read: this can run while
the run trains. Bad input ends with one line `error: ...` on stderr, exit
status 2, and nothing written.

From Python: `layermatch_jax.commands.probe.probe_workdir(workdir, step)` returns
the same dicts.
"""

import contextlib
import json
import os
import sys
from typing import List, Optional, Union

from layermatch_jax import cli_util
from layermatch_jax import saved_run


def _run_fields(run, step: int) -> dict:
  from layermatch_jax.algorithms import presets  # pylint: disable=g-import-not-at-top

  config = run.config
  return dict(
    workdir=os.path.abspath(run.workdir),
    step=step,
    algorithm=config.algorithm,
    policy=presets.resolve_policy(config),
    dataset=config.data.name,
    num_labels=config.data.num_labels,
    seed=config.seed,
  )


def probe_workdir(
  workdir: str,
  step: Union[int, str, None] = None,
  k: Optional[int] = None,
  max_train: Optional[int] = None,
  notes: Optional[list] = None,
) -> List[dict]:
  """Probes WORKDIR at `step` (an int, None for the latest, 'all' for every kept
  checkpoint); one dict per step. Raises ToolError on bad input."""
  from layermatch_jax import probe  # pylint: disable=g-import-not-at-top

  notes = [] if notes is None else notes
  k = probe.KNN_K if k is None else k
  if k < 1:
    raise cli_util.ToolError(
      f'--k={k} is not valid: give a positive number of neighbours'
    )
  if max_train is not None and max_train < 1:
    raise cli_util.ToolError(
      f'--max_train={max_train} is not valid: give a positive number of images'
    )
  try:
    if step != 'all':
      saved_run.resolve_step(
        workdir, step
      )  # Before the data is read: a quick answer.
    run = saved_run.SavedRun(workdir, notes)
    if run.split is None:
      notes.append(
        f'note: {workdir} has no splits/split.json: probe_labeled_top1 is null'
      )
    results = []
    for s in run.steps if step == 'all' else [step]:
      state, s = run.restore(s)
      result = _run_fields(run, s)
      result.update(
        probe.probe_state(
          run.learner,
          state,
          run.source,
          labeled_indices=None
          if run.split is None
          else run.split.labeled_indices,
          k=k,
          max_train=max_train,
        )
      )
      results.append(result)
  except saved_run.RunError as e:
    raise cli_util.ToolError(str(e)) from e
  return results


def _step(text: str) -> Union[int, str, None]:
  if text in (None, 'latest'):
    return None
  if text == 'all':
    return 'all'
  try:
    return int(text)
  except ValueError:
    raise cli_util.ToolError(
      f'--step={text} is not valid: give a saved step, latest or all'
    ) from None


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--workdir', required=True, help='A training workdir.')
  parser.add_argument(
    '--step',
    default=None,
    help='Checkpoint step, latest (default) or all (every kept checkpoint).',
  )
  parser.add_argument(
    '--json', default=None, help='Also write the JSON lines to this file.'
  )
  parser.add_argument(
    '--k', type=int, default=None, help='kNN neighbours (default 20).'
  )
  parser.add_argument(
    '--max_train',
    type=int,
    default=None,
    help='Use at most this many training images (a fixed random subset).',
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  notes = []
  step = _step(args.step)
  if args.json is not None:
    out_dir = os.path.dirname(os.path.abspath(args.json))
    if not os.path.isdir(out_dir):
      raise cli_util.ToolError(
        f'--json={args.json}: directory {out_dir} does not exist'
      )
  # stdout carries only the JSON lines: anything printed on the way goes to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    results = probe_workdir(args.workdir, step, args.k, args.max_train, notes)
  # Printed only on success: notes would break the one-line error contract.
  for note in notes:
    print(note, file=sys.stderr)
  lines = [json.dumps(r, sort_keys=True) for r in results]
  if args.json is not None:
    cli_util.write_text(args.json, ''.join(line + '\n' for line in lines))
  print('\n'.join(lines), flush=True)


def run(argv=None):
  """`layermatch-probe`: main with bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
