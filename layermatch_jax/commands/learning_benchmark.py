"""Learning benchmark: supervised vs FixMatch vs LayerMatch (and the policy family)
on CIFAR-10 as an image folder, with the same seeds, label splits and step budget.

  layermatch-learning-benchmark --data=../shared/data/cifar10-jpeg.tar.gz \
      --budget=cpu --out=benchmarks/cifar10_cpu      # or: python tools/learning_benchmark.py ...
  layermatch-learning-benchmark --data=/tmp/cifar10 --budget=gpu --out=DIR --steps=50000

--data is the .tar.gz (unpacked once into --unpack_dir) or an unpacked folder
(train/<class>/*, test/<class>/*). Budgets:
  cpu  configs/cifar10_cpu.py: 16x16 px, WRN-10-1, B=32, mu=4, 1500 steps (~5 min a
       run on a 2-core CPU); 40 and 250 labels; seeds 0, 1, 2.
  gpu  configs/folder.py: 32x32 px, WRN-28-2, B=64, mu=7, full recipe; 40 labels;
       --steps as many as fit (default 100000).
Each run is `python -m layermatch_jax.main` in its own process and workdir
OUT/runs/ALGORITHM-LABELS-sSEED; a finished run (summary.json) is not rerun, so
an interrupted benchmark continues where it stopped. Writes OUT/results.json,
OUT/results.md (mean +- std of the final test top-1 over seeds, per-seed values,
and the gain over supervised paired by seed)
and OUT/accuracy.png (test top-1 against the step, mean over seeds), over every finished
run under OUT/runs (--report_only: tabulate those without running anything).
--dry_run prints the commands (unpacking the archive, if needed, included) and
neither unpacks nor creates anything. Runs go through `python -m
layermatch_jax.main` from the checkout (its configs/). Bad input ends with one
line `error: ...` on stderr and exit status 2.
"""

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time

import numpy as np

from layermatch_jax import cli_util
from layermatch_jax import metrics as metrics_lib

# The trainer runs from the checkout: --config=configs/NAME.py is relative to it.
ROOT = cli_util.CHECKOUT

# Name in the table -> config overrides. `lm+POLICY` is LayerMatch's two parts
# (Grad-ReLU, Avg-Clustering) on top of POLICY's pseudo-label selection.
ALGORITHMS = {
  'supervised': {'algorithm': 'supervised'},
  'fixmatch': {'algorithm': 'fixmatch'},
  'layermatch': {'algorithm': 'layermatch'},
  'layermatch_adaptive': {'algorithm': 'layermatch_adaptive'},
  'layermatch_warmup': {'algorithm': 'layermatch_warmup'},
  'flexmatch': {'algorithm': 'flexmatch'},
  'lm+flexmatch': {
    'algorithm': 'layermatch',
    'pseudo_label.policy': 'flexmatch',
  },
  'freematch': {'algorithm': 'freematch'},
  'lm+freematch': {
    'algorithm': 'layermatch',
    'pseudo_label.policy': 'freematch',
  },
  'softmatch': {'algorithm': 'softmatch'},
  'lm+softmatch': {
    'algorithm': 'layermatch',
    'pseudo_label.policy': 'softmatch',
  },
}

BUDGETS = {
  # One host device: simulated CPU devices meet in collectives that XLA aborts
  # when a loaded machine delays one thread past 40 s.
  'cpu': dict(
    config='configs/cifar10_cpu.py',
    num_labels=(40, 250),
    seeds=(0, 1, 2),
    steps=None,
    devices=1,
    overrides={},
  ),
  'gpu': dict(
    config='configs/folder.py',
    num_labels=(40,),
    seeds=(0, 1, 2),
    steps=100000,
    devices=None,
    overrides={
      'model.name': 'wrn28_2',
      'eval_every_steps': 2000,
      'checkpoint_every_steps': 5000,
      'log_every_steps': 500,
    },
  ),
}


# Keys each run's own flags set (--algorithms, --num_labels, --seeds, --steps, --data).
OWN_KEYS = (
  'algorithm',
  'pseudo_label.policy',
  'data.dir',
  'data.num_labels',
  'seed',
  'num_train_steps',
)


def data_folder(data: str, unpack_dir: str):
  """(the image folder to train on, the archive to unpack into it first or None).

  Looks only: nothing is unpacked or created here.
  """
  if os.path.isdir(data):
    return data, None
  if os.path.isfile(data) and data.endswith(('.tar.gz', '.tgz', '.tar')):
    unpacked = os.path.isdir(os.path.join(unpack_dir, 'train'))
    return unpack_dir, (None if unpacked else data)
  raise cli_util.ToolError(
    f'--data={data} is neither a folder nor a .tar.gz archive'
  )


def unpack(archive: str, folder: str):
  print(f'Unpacking {archive} into {folder}', flush=True)
  os.makedirs(folder, exist_ok=True)
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter='data')


def check_folder(folder: str):
  for sub in ('train', 'test'):
    if not os.path.isdir(os.path.join(folder, sub)):
      raise cli_util.ToolError(
        f'{folder} has no {sub}/ folder: give CIFAR-10 as '
        'train/<class>/*.jpg and test/<class>/*.jpg'
      )


def run_name(algorithm: str, num_labels: int, seed: int) -> str:
  return f'{algorithm.replace("+", "_")}-{num_labels}-s{seed}'


def config_steps(config_path: str) -> int:
  """num_train_steps of a config file (configs/NAME.py), for budgets that keep it."""
  return cli_util.load_config_file(
    os.path.join(ROOT, config_path)
  ).num_train_steps


def command(
  budget: dict,
  folder: str,
  workdir: str,
  algorithm: str,
  num_labels: int,
  seed: int,
  steps,
  extra=None,
) -> list:
  """The training command of one run; `extra` ({key: value}, --set) comes last."""
  overrides = dict(budget['overrides'], **ALGORITHMS[algorithm])
  overrides.update(
    {'data.dir': folder, 'data.num_labels': num_labels, 'seed': seed}
  )
  if steps:
    overrides['num_train_steps'] = steps
  overrides.update(extra or {})
  return [
    sys.executable,
    '-m',
    'layermatch_jax.main',
    f'--config={budget["config"]}',
    f'--workdir={workdir}',
  ] + [f'--config.{k}={v}' for k, v in overrides.items()]


def run_one(cmd, workdir: str, devices, steps: int) -> dict:
  """Runs (or resumes) one training; returns its summary.

  A finished run is reused, so one made with another step budget is an error
  rather than a silently mixed table.
  """
  summary_path = os.path.join(workdir, 'summary.json')
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      done_steps = json.load(f).get('steps')
    if done_steps != steps:
      raise cli_util.ToolError(
        f'{workdir} is a finished run of {done_steps} steps, not of '
        f'{steps}: give each step budget its own --out'
      )
  if not os.path.exists(summary_path):
    env = dict(os.environ)
    if devices:
      env['XLA_FLAGS'] = (
        env.get('XLA_FLAGS', '')
        + f' --xla_force_host_platform_device_count={devices}'
      ).strip()
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(workdir, 'stdout.log'), 'a') as log:
      rc = subprocess.call(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
      )
    if rc != 0:
      raise cli_util.ToolError(
        f'run {workdir} failed with exit status {rc}: see {workdir}/stdout.log'
      )
    print(f'  done in {time.time() - t0:.0f} s', flush=True)
  with open(summary_path) as f:
    return json.load(f)


def eval_curve(workdir: str):
  records = metrics_lib.read_metrics(workdir, 'eval')
  return [r['step'] for r in records], [r['top1'] for r in records]


def collect(out: str) -> list:
  """Every finished run under OUT/runs (this invocation's and earlier ones')."""
  results = []
  runs = os.path.join(out, 'runs')
  for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
    summary_path = os.path.join(runs, name, 'summary.json')
    parts = name.rsplit('-', 2)
    if (
      not os.path.exists(summary_path)
      or len(parts) != 3
      or not parts[2].startswith('s')
    ):
      continue
    algorithm = parts[0].replace('lm_', 'lm+')
    if algorithm not in ALGORITHMS:
      continue
    with open(summary_path) as f:
      summary = json.load(f)
    results.append(
      dict(
        algorithm=algorithm,
        num_labels=int(parts[1]),
        seed=int(parts[2][1:]),
        final_top1=summary['final_top1'],
        best_top1=summary['best_top1'],
        steps=summary['steps'],
        wall_s=summary['wall_s'],
        curve=eval_curve(os.path.join(runs, name)),
      )
    )
  return results


def aggregate(results: list) -> list:
  """Rows (algorithm, labels) with mean/std over seeds."""
  rows = {}
  for r in results:
    rows.setdefault((r['algorithm'], r['num_labels']), []).append(r)
  out = []
  for (algorithm, num_labels), runs in rows.items():
    final = np.array([r['final_top1'] for r in runs])
    out.append(
      dict(
        algorithm=algorithm,
        num_labels=num_labels,
        seeds=[r['seed'] for r in runs],
        final_top1=[float(x) for x in final],
        mean=float(final.mean()),
        std=float(final.std(ddof=1)) if len(final) > 1 else 0.0,
        wall_s=float(np.mean([r['wall_s'] for r in runs])),
      )
    )
  for row in out:
    row['vs_supervised'] = paired_gain(
      results, row['algorithm'], row['num_labels']
    )
  return out


def paired_gain(results: list, algorithm: str, num_labels: int):
  """Top-1 minus supervised's, seed by seed (same labeled split), or None.

  Pairing by seed removes the split-to-split spread that both runs share, which
  is most of the spread over seeds at a few labels per class.
  """
  if algorithm == 'supervised':
    return None

  def by_seed(name):
    return {
      r['seed']: r['final_top1']
      for r in results
      if r['algorithm'] == name and r['num_labels'] == num_labels
    }

  mine, baseline = by_seed(algorithm), by_seed('supervised')
  seeds = sorted(set(mine) & set(baseline))
  if not seeds:
    return None
  diffs = np.array([mine[s] - baseline[s] for s in seeds])
  return dict(
    seeds=seeds,
    diffs=[float(d) for d in diffs],
    mean=float(diffs.mean()),
    std=float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
    ahead=int((diffs > 0).sum()),
  )


def markdown(rows: list, header: str) -> str:
  lines = [
    header,
    '',
    '| algorithm | labels | test top-1, mean +- std | per seed '
    '| minus supervised, same seeds | wall / run |',
    '|---|---|---|---|---|---|',
  ]
  for r in sorted(
    rows,
    key=lambda r: (r['num_labels'], list(ALGORITHMS).index(r['algorithm'])),
  ):
    per_seed = ', '.join(f'{x:.4f}' for x in r['final_top1'])
    gain = r.get('vs_supervised')
    gain = (
      f'{gain["mean"]:+.4f} +- {gain["std"]:.4f} (ahead in {gain["ahead"]}/'
      f'{len(gain["seeds"])})'
      if gain
      else ''
    )
    lines.append(
      f'| {r["algorithm"]} | {r["num_labels"]} | {r["mean"]:.4f} +- {r["std"]:.4f} '
      f'| {per_seed} | {gain} | {r["wall_s"] / 60:.1f} min |'
    )
  return '\n'.join(lines) + '\n'


def plot(results: list, out: str):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  labels = sorted({r['num_labels'] for r in results})
  fig, axes = plt.subplots(
    1, len(labels), figsize=(6 * len(labels), 4), squeeze=False
  )
  for ax, num_labels in zip(axes[0], labels):
    for i, algorithm in enumerate(
      a for a in ALGORITHMS if any(r['algorithm'] == a for r in results)
    ):
      curves = [
        r['curve']
        for r in results
        if r['algorithm'] == algorithm and r['num_labels'] == num_labels
      ]
      if not curves:
        continue
      n = min(len(c[0]) for c in curves)
      steps = curves[0][0][:n]
      mean = np.mean([c[1][:n] for c in curves], axis=0)
      ax.plot(
        steps,
        mean,
        color=f'C{i}',
        marker='o',
        markersize=3,
        label=f'{algorithm} ({len(curves)} seed{"s" if len(curves) > 1 else ""})',
      )
    ax.set_title(f'{num_labels} labels')
    ax.set_xlabel('step')
    ax.set_ylabel('test top-1 (EMA)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  with cli_util.atomic_write(out, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument(
    '--data', required=True, help='CIFAR-10 folder or .tar.gz archive.'
  )
  parser.add_argument(
    '--out', required=True, help='Output directory (runs, tables, plot).'
  )
  parser.add_argument('--budget', default='cpu', help='cpu | gpu')
  parser.add_argument(
    '--algorithms',
    default='supervised,fixmatch,layermatch',
    help=f'Comma-separated, from: {",".join(ALGORITHMS)}',
  )
  parser.add_argument(
    '--num_labels', default=None, help='Comma-separated (budget default).'
  )
  parser.add_argument(
    '--seeds', default=None, help='Comma-separated (budget default).'
  )
  parser.add_argument(
    '--steps', type=int, default=None, help='Train steps (budget default).'
  )
  parser.add_argument(
    '--unpack_dir',
    default='/tmp/layermatch_cifar10',
    help='Where a --data archive is unpacked.',
  )
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='Extra config override for every run (repeatable), e.g. '
    '--set=checkpoint_every_steps=250 --set=keep_checkpoints=7 to keep '
    'checkpoints for tools/probe.py. Not for what the table compares.',
  )
  parser.add_argument(
    '--dry_run',
    action='store_true',
    help='Print the commands only: nothing is unpacked, created or run.',
  )
  parser.add_argument(
    '--report_only',
    action='store_true',
    help='Run nothing: tabulate the finished runs under --out.',
  )
  return parser.parse_args(argv)


def _int_list(text, name):
  try:
    values = tuple(int(x) for x in text.split(','))
  except ValueError:
    raise cli_util.ToolError(
      f'--{name}={text!r} is not valid: give comma-separated integers'
    ) from None
  return values


def _overrides(items) -> dict:
  """--set KEY=VALUE items as {key: value}; the algorithm and split keys are the tool's."""
  extra = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise cli_util.ToolError(
        f'--set={item!r} is not valid: give KEY=VALUE, e.g. '
        '--set=checkpoint_every_steps=250'
      )
    if key in OWN_KEYS:
      raise cli_util.ToolError(
        f'--set={item!r}: {key} is set by the tool itself (use its own flag)'
      )
    extra[key] = value
  return extra


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  args = parse_args(argv)
  extra = _overrides(args.set)
  if args.budget not in BUDGETS:
    raise cli_util.ToolError(
      f'--budget={args.budget!r} is not valid: use one of {sorted(BUDGETS)}'
    )
  budget = BUDGETS[args.budget]
  algorithms = args.algorithms.split(',')
  for a in algorithms:
    if a not in ALGORITHMS:
      raise cli_util.ToolError(
        f'--algorithms: {a!r} is not one of {", ".join(ALGORITHMS)}'
      )
  num_labels = (
    _int_list(args.num_labels, 'num_labels')
    if args.num_labels
    else budget['num_labels']
  )
  seeds = _int_list(args.seeds, 'seeds') if args.seeds else budget['seeds']
  steps = args.steps or budget['steps'] or config_steps(budget['config'])
  out = os.path.abspath(args.out)
  folder = None  # --report_only reads no data.
  if not args.report_only:
    folder, archive = data_folder(args.data, args.unpack_dir)
    if args.dry_run:
      if archive:
        print(
          f'mkdir -p {shlex.quote(folder)} && tar xf {shlex.quote(archive)} '
          f'-C {shlex.quote(folder)}'
        )
      else:
        check_folder(folder)
    else:
      if archive:
        unpack(archive, folder)
      check_folder(folder)
      os.makedirs(os.path.join(out, 'runs'), exist_ok=True)

  # Seed-major order: a benchmark stopped early still has every algorithm per seed.
  for seed in [] if args.report_only else seeds:
    for labels in num_labels:
      for algorithm in algorithms:
        workdir = os.path.join(out, 'runs', run_name(algorithm, labels, seed))
        cmd = command(
          budget, folder, workdir, algorithm, labels, seed, steps, extra
        )
        if args.dry_run:
          print(shlex.join(cmd))
          continue
        print(
          f'{algorithm}, {labels} labels, seed {seed}: {workdir}', flush=True
        )
        run_one(cmd, workdir, budget['devices'], steps)
  if args.dry_run:
    return
  results = collect(
    out
  )  # Nothing is created before this check with --report_only.
  if not results:
    raise cli_util.ToolError(f'no finished runs under {out}/runs')
  step_counts = sorted({r['steps'] for r in results})
  if len(step_counts) > 1:
    raise cli_util.ToolError(
      f'the finished runs under {out}/runs have different step '
      f'budgets ({", ".join(map(str, step_counts))}): give each budget '
      'its own --out'
    )
  seeds = sorted({r['seed'] for r in results})
  rows = aggregate(results)
  commit = _commit()
  header = (
    f'Budget {args.budget} ({budget["config"]}, {results[0]["steps"]} steps), '
    f'data {args.data}, seeds {",".join(map(str, seeds))}, commit {commit or "?"}'
  )
  cli_util.write_json(
    os.path.join(out, 'results.json'),
    dict(budget=args.budget, commit=commit, runs=results, rows=rows),
    indent=1,
  )
  table = markdown(rows, header)
  cli_util.write_text(os.path.join(out, 'results.md'), table)
  plot(results, os.path.join(out, 'accuracy.png'))
  print(table)


def _commit() -> str:
  """The checkout's short commit, or '' outside a git checkout."""
  try:
    return subprocess.run(
      ['git', 'rev-parse', '--short', 'HEAD'],
      cwd=ROOT,
      capture_output=True,
      text=True,
    ).stdout.strip()
  except OSError:  # No git.
    return ''


def run(argv=None):
  """`layermatch-learning-benchmark`: main with bad input as one `error:` line, exit 2."""
  cli_util.run(main, argv)
