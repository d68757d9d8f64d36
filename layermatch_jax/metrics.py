"""Metric logs: WORKDIR/metrics.jsonl and TensorBoard event files, same names.

One JSON object a line: {"step": k, "split": "train" | "eval", <name>: value, ...}.
Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import math
import os
from typing import Dict, List, Optional

import numpy as np

METRICS_FILE = 'metrics.jsonl'


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class MetricWriter:
  """Appends to metrics.jsonl and writes TensorBoard scalars `<split>/<name>`."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  def write(self, step: int, split: str, values: Dict[str, float]):
    if not self.enabled:
      return
    # Undefined metrics (e.g. pseudo-label accuracy with no confident sample)
    # are NaN in the step and null here: JSON has no NaN.
    record = {'step': int(step), 'split': split}
    record.update({k: _finite_or_none(v) for k, v in sorted(values.items())})
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for name, value in values.items():
        if math.isfinite(float(value)):
          self._tb.add_scalar(f'{split}/{name}', float(value), int(step))

  def flush(self):
    if self._tb is not None:
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _parse(line: str) -> Optional[dict]:
  """One record; None for a line cut short by a crash (kill -9 mid-write)."""
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and 'step' in record else None


def read_metrics(workdir: str, split: Optional[str] = None) -> List[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [_parse(line) for line in f if line.strip()]
  return [r for r in records if r is not None and (split is None or r['split'] == split)]


def truncate_after(workdir: str, step: int):
  """Drops lines logged after `step` (a resumed run logs those steps again).

  Written to a temporary file and renamed, so a crash leaves the old file whole.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = [line for line in lines
          if _parse(line) is not None and _parse(line)['step'] <= step]
  if len(keep) == len(lines):
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(keep)
  os.replace(tmp, path)


def mean_metrics(history: List[Dict[str, float]]) -> Dict[str, float]:
  """Per-name mean over a logging window, ignoring steps where a name was
  absent or undefined (NaN)."""
  names = sorted({k for h in history for k in h})
  out = {}
  for name in names:
    values = [h[name] for h in history if name in h and math.isfinite(h[name])]
    out[name] = float(np.mean(values)) if values else float('nan')
  return out


def summarize(eval_records: List[dict], steps: int, wall_s: float, last: int = 20) -> dict:
  """summary.json: final, best and median-of-last-`last` eval accuracy."""
  top1 = [r['top1'] for r in eval_records]
  return dict(
      final_top1=top1[-1] if top1 else None,
      best_top1=max(top1) if top1 else None,
      median_last_top1=float(np.median(top1[-last:])) if top1 else None,
      num_evals=len(top1),
      steps=int(steps),
      wall_s=float(wall_s),
  )
