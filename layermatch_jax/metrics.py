"""Metrics of a run: the logs, the window of step metrics, the progress line.

Logs: WORKDIR/metrics.jsonl and TensorBoard event files, with the same names.
One JSON object a line: {"step": k, "split": "train" | "eval" | "probe",
<name>: value, ...}. Only process 0 writes; other processes get a writer that
does nothing.
"""

import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional

import jax
import numpy as np

from layermatch_jax import cli_util

METRICS_FILE = 'metrics.jsonl'


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class MetricWriter:
  """Appends to metrics.jsonl and writes TensorBoard scalars `<split>/<name>`."""

  def __init__(
    self, workdir: str, enabled: bool = True, tensorboard: bool = True
  ):
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
  return [
    r
    for r in records
    if r is not None and (split is None or r['split'] == split)
  ]


def truncate_after(workdir: str, step: int):
  """Drops lines logged after `step` (a resumed run logs those steps again).

  Written to a temporary file and renamed, so a crash leaves the old file whole.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  keep = [
    line
    for line in lines
    if _parse(line) is not None and _parse(line)['step'] <= step
  ]
  if len(keep) == len(lines):
    return
  cli_util.write_text(path, ''.join(keep))


def mean_metrics(history: List[Dict[str, float]]) -> Dict[str, float]:
  """Per-name mean over a logging window, ignoring steps where a name was
  absent or undefined (NaN)."""
  names = sorted({k for h in history for k in h})
  out = {}
  for name in names:
    values = [h[name] for h in history if name in h and math.isfinite(h[name])]
    out[name] = float(np.mean(values)) if values else float('nan')
  return out


def summarize(
  eval_records: List[dict], steps: int, wall_s: float, last: int = 20
) -> dict:
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


# Per-step metrics that must stay finite, in the order a message names them.
FINITE_KEYS = (
  'loss_sup',
  'loss_unsup',
  'loss_cluster',
  'loss_fairness',
  'loss',
  'grad_norm/backbone',
  'grad_norm/head',
)


def first_non_finite(steps, history):
  """(step, key, value) of the first non-finite loss term or gradient norm, or None."""
  for step, m in zip(steps, history):
    for key in FINITE_KEYS:
      if key in m and not np.isfinite(m[key]):
        return step, key, m[key]
  return None


class MetricWindow:
  """The step metrics of one logging window.

  Steps append their metrics as device arrays (no wait); `fetch` brings the
  pending ones to the host and returns the first non-finite loss or gradient
  norm among them, if any; `take` returns the window's metrics and starts a
  new window.
  """

  def __init__(self, first_step: int, to_host: Callable):
    self._to_host = to_host  # One device's copy of a replicated tree, as numpy.
    self._next_step = first_step  # The step of _pending[0].
    self._pending = []  # Still on device.
    self._fetched = []  # On the host, checked.

  def append(self, step_metrics):
    self._pending.append(step_metrics)

  def fetch(self):
    """Fetches the pending metrics: (step, key, value) of the first non-finite one, or None."""
    history = [
      {k: float(v) for k, v in self._to_host(m).items()} for m in self._pending
    ]
    steps = range(self._next_step, self._next_step + len(history))
    self._pending, self._next_step = [], self._next_step + len(history)
    self._fetched.extend(history)
    return first_non_finite(steps, history)

  def take(self) -> List[Dict[str, float]]:
    """The window's metrics (fetch first: a non-finite one is the caller's to check)."""
    history, self._fetched = self._fetched, []
    return history


class Progress:
  """A line every log step; a one-line bar between them on a terminal."""

  def __init__(self, total: int, enabled: bool = True):
    self.total = total
    self.enabled = enabled
    self.tty = enabled and sys.stdout.isatty()
    self.t0 = None  # Set after the first (compiling) step.
    self.t0_step = None
    self._last_bar = 0.0

  def after_step(self, step: int, step_metrics):
    """Starts the clock after the first (compiling) step; draws the bar."""
    if self.t0 is None:
      jax.block_until_ready(step_metrics)  # Compilation is not throughput.
      self.t0, self.t0_step = time.time(), step
    self.bar(step)

  def timing(self, step: int):
    """(steps per second since the first step, seconds left), NaN before."""
    now = time.time()
    if self.t0 is None or step <= self.t0_step:
      return float('nan'), float('nan')
    steps_per_s = (step - self.t0_step) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float('nan')
    return steps_per_s, eta

  def bar(self, step: int):
    if not self.tty or time.time() - self._last_bar < 0.5:
      return
    self._last_bar = time.time()
    done = int(30 * step / self.total)
    sys.stdout.write(f'\r[{"#" * done}{"." * (30 - done)}] {step}/{self.total}')
    sys.stdout.flush()

  def line(self, text: str):
    if self.enabled:
      print(('\r' if self.tty else '') + text, flush=True)


def format_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def train_line(step: int, total: int, m: Dict[str, float], eta: float) -> str:
  """The log step's progress line: losses, mask, pseudo-label accuracy, lr, speed, ETA."""
  nan = float('nan')
  parts = [
    f'step {step}/{total}',
    f'loss {m.get("loss", nan):.4f}',
    f'sup {m.get("loss_sup", nan):.4f}',
  ]
  for key, short in (('loss_unsup', 'unsup'), ('loss_cluster', 'cluster')):
    if key in m:
      parts.append(f'{short} {m[key]:.4f}')
  if 'mask_ratio' in m:
    parts.append(f'mask {m["mask_ratio"]:.3f}')
  if 'pseudo_label_acc' in m:
    parts.append(f'pl_acc {m["pseudo_label_acc"]:.3f}')
  parts.append(f'lr {m.get("lr", nan):.4g}')
  img_per_s = m.get('img_per_sec', nan)
  parts.append(
    f'{img_per_s:.0f} img/s' if np.isfinite(img_per_s) else '? img/s'
  )
  parts.append(f'ETA {format_eta(eta)}')
  return ' | '.join(parts)
