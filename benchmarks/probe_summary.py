"""Tabulates tools/probe.py output (JSON lines) over algorithms and seeds.

  python benchmarks/probe_summary.py benchmarks/digits_probe/probe/*.jsonl
  python benchmarks/probe_summary.py --step=1500 --pair=layermatch,fixmatch FILES...
  python benchmarks/probe_summary.py --name=file --pair=fixmatch_ac,fixmatch FILES...

Prints markdown: mean +- std over seeds of each probe number per algorithm at
one step (default: the last step every file has), the trajectory of the
head-to-probe gap over the steps, and paired per-seed differences between two
algorithms (same seed = same labeled images).
"""

import argparse
import json
import os
import re
import sys

import numpy as np

KEYS = ('head_top1', 'probe_top1', 'probe_labeled_top1', 'knn_top1', 'centre_top1',
        'head_probe_gap', 'head_labeled_probe_gap')


def _file_name(path):
  """'runs/fixmatch_ac-s2.jsonl' -> 'fixmatch_ac' (the name without its seed)."""
  return re.sub(r'-s\d+$', '', os.path.basename(path).removesuffix('.jsonl'))


def load(paths, name='algorithm'):
  """{(name, seed): {step: record}} from probe JSON lines.

  name='algorithm' groups by the config's algorithm; name='file' by the file name
  without '-sSEED' (for variants of one algorithm, e.g. FixMatch + Avg-Clustering).
  """
  runs, sources = {}, {}
  for path in paths:
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          key = (r['algorithm'] if name == 'algorithm' else _file_name(path), r['seed'])
          if sources.setdefault(key, path) != path:
            sys.exit(f'error: {path} and {sources[key]} are both {key}: use --name=file')
          runs.setdefault(key, {})[r['step']] = r
  return runs


def _fmt(values):
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  std = np.std(values, ddof=1) if len(values) > 1 else 0.0
  return f'{np.mean(values):.4f} +- {std:.4f}'


def table(runs, step):
  algorithms = sorted({a for a, _ in runs}, key=('supervised', 'fixmatch', 'layermatch').index
                      if all(a in ('supervised', 'fixmatch', 'layermatch') for a, _ in runs)
                      else None)
  lines = [f'| algorithm (step {step}) | seeds | ' + ' | '.join(KEYS) + ' |',
           '|---|---|' + '---|' * len(KEYS)]
  for a in algorithms:
    recs = [steps[step] for (alg, _), steps in sorted(runs.items()) if alg == a and step in steps]
    lines.append(f'| {a} | {len(recs)} | ' + ' | '.join(_fmt([r[k] for r in recs]) for k in KEYS)
                 + ' |')
  return '\n'.join(lines)


def gap_trajectory(runs, key='head_probe_gap'):
  algorithms = sorted({a for a, _ in runs})
  steps = sorted(set.intersection(*[set(s) for s in runs.values()]))
  lines = [f'| {key}, mean over seeds | ' + ' | '.join(map(str, steps)) + ' |',
           '|---|' + '---|' * len(steps)]
  for a in algorithms:
    cells = []
    for s in steps:
      values = [st[s][key] for (alg, _), st in runs.items() if alg == a and s in st]
      cells.append(f'{np.mean(values):.4f}')
    lines.append(f'| {a} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def paired(runs, first, second, step):
  seeds = sorted({s for a, s in runs if a == first} & {s for a, s in runs if a == second})
  lines = [f'| {first} minus {second} (step {step}) | mean +- std | per seed ({", ".join(map(str, seeds))}) |',
           '|---|---|---|']
  for k in KEYS:
    diffs = [runs[first, s][step][k] - runs[second, s][step][k] for s in seeds
             if runs[first, s][step][k] is not None and runs[second, s][step][k] is not None]
    if diffs:
      lines.append(f'| {k} | {_fmt(diffs)} | ' + ', '.join(f'{d:+.4f}' for d in diffs) + ' |')
  return '\n'.join(lines)


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('files', nargs='+')
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--pair', default='layermatch,fixmatch')
  parser.add_argument('--name', default='algorithm', choices=('algorithm', 'file'),
                      help="Row names: the runs' algorithm, or the file name without -sSEED.")
  args = parser.parse_args(argv)
  runs = load(args.files, args.name)
  step = args.step or max(set.intersection(*[set(s) for s in runs.values()]))
  print(table(runs, step), end='\n\n')
  print(gap_trajectory(runs), end='\n\n')
  first, second = args.pair.split(',')
  print(paired(runs, first, second, step), end='\n\n')
  if any(a == 'supervised' for a, _ in runs):
    for a in (first, second):
      print(paired(runs, a, 'supervised', step), end='\n\n')


if __name__ == '__main__':
  main(sys.argv[1:])
