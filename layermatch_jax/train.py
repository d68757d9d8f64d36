"""The training loop: init or resume, pmapped steps, evaluation, logs, checkpoints.

`train_and_evaluate(config, workdir)` is what `main.py` runs and what a notebook
can call. Workdir contents (DESIGN.md section 3): config.json, splits/,
data_summary.json (what the data turned out to be: data/summary.py),
metrics.jsonl, TensorBoard events, checkpoints/, summary.json.
"""

import json
import os
import sys
import time
from typing import Optional

import jax
import numpy as np

from layermatch_jax import checkpoint as checkpoint_lib
from layermatch_jax import config_lib, data, distributed, evaluation
from layermatch_jax import metrics as metrics_lib
from layermatch_jax import preemption
from layermatch_jax import probe as probe_lib
from layermatch_jax.learner import Learner

SUMMARY_FILE = 'summary.json'
CONFIG_FILE = 'config.json'


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked."""


class NonFiniteError(ValueError):
  """A loss or gradient became NaN or infinite; no checkpoint was written after it."""


# Per-step metrics that must stay finite, in the order a message names them.
_FINITE_KEYS = ('loss_sup', 'loss_unsup', 'loss_cluster', 'loss_fairness', 'loss',
                'grad_norm/backbone', 'grad_norm/head')


def first_non_finite(steps, history):
  """(step, key, value) of the first non-finite loss term or gradient norm, or None."""
  for step, m in zip(steps, history):
    for key in _FINITE_KEYS:
      if key in m and not np.isfinite(m[key]):
        return step, key, m[key]
  return None


def _write_json(path: str, obj):
  """Atomic: a temporary file renamed into place."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def _prepare_workdir(workdir: str, resume: bool):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file: give a directory (new or a run to resume)')
  if not resume and os.path.isdir(workdir):
    held = [f for f in (CONFIG_FILE, metrics_lib.METRICS_FILE, 'checkpoints', SUMMARY_FILE)
            if os.path.exists(os.path.join(workdir, f))]
    if held:
      raise WorkdirError(
          f'--workdir={workdir} already holds a run ({", ".join(held)}) and '
          'config.resume=False does not overwrite it: give a new --workdir, or drop '
          '--config.resume=False to continue that run')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} cannot be created ({e.strerror or e}): '
                       'give a directory you can write to') from e


def _load_or_make_split(source, config, workdir: str, is_chief: bool):
  """The workdir's split when resuming, else data.split_file or a fresh draw."""
  path = data.split_path(workdir)
  if os.path.exists(path):
    split = data.load_split(path, source)
    wanted = data.labeled_count(source, config.data.num_labels)
    if split.num_labels != wanted:
      raise data.DataError(
          f'{path} has {split.num_labels} labels but data.num_labels='
          f'{config.data.num_labels!r} asks for {wanted}: use a new --workdir or the same '
          'num_labels')
    return split
  split = data.get_split(source, config)
  if is_chief:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data.save_split(path, split)
  return split


class Progress:
  """A line every log step; a one-line bar between them on a terminal."""

  def __init__(self, total: int, start: int, enabled: bool = True):
    self.total, self.start = total, start
    self.enabled = enabled
    self.tty = enabled and sys.stdout.isatty()
    self.t0 = None  # Set after the first (compiling) step.
    self.t0_step = start
    self._last_bar = 0.0

  def started(self, step: int):
    """Called once the first step has run: compilation is not throughput."""
    self.t0, self.t0_step = time.time(), step

  def timing(self, step: int):
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


def _fmt_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _log_line(step, total, m, img_per_s, eta):
  parts = [f'step {step}/{total}', f"loss {m.get('loss', float('nan')):.4f}",
           f"sup {m.get('loss_sup', float('nan')):.4f}"]
  for key, short in (('loss_unsup', 'unsup'), ('loss_cluster', 'cluster')):
    if key in m:
      parts.append(f'{short} {m[key]:.4f}')
  if 'mask_ratio' in m:
    parts.append(f"mask {m['mask_ratio']:.3f}")
  if 'pseudo_label_acc' in m:
    parts.append(f"pl_acc {m['pseudo_label_acc']:.3f}")
  parts.append(f"lr {m.get('lr', float('nan')):.4g}")
  parts.append(f'{img_per_s:.0f} img/s' if np.isfinite(img_per_s) else '? img/s')
  parts.append(f'ETA {_fmt_eta(eta)}')
  return ' | '.join(parts)


def _compile_collectives(learner, config, state, batch, eval_batch):
  """Compiles every function that holds a collective, before the processes meet.

  With several processes, CPU collectives (gloo) fail when the processes enter
  one more than 30 s apart ("GetKeyValue() timed out"), and on a loaded machine
  compile times alone differ by more. Compiled here, each function's first call
  finds its executable ready, so the processes enter the collective together.
  """
  diagnostics_at = {bool(config.grad_norms_by_term)}  # The step variant of log steps.
  if config.log_every_steps > 1:
    diagnostics_at.add(False)
  for diagnostics in sorted(diagnostics_at):
    learner.step_fn(diagnostics).lower(state, batch).compile()
  if eval_batch is not None:
    evaluation.eval_step_fn(learner).lower(state, evaluation.eval_inputs(eval_batch)).compile()


def train_and_evaluate(config, workdir: str, max_steps: Optional[int] = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  `max_steps` stops early (after that global step) without finishing the run,
  as a preemption would; the summary is written only when the run completes.
  Returns the summary (or, when stopped early, the latest metrics).
  """
  config_lib.validate(config)
  if config.probe_every_steps and jax.process_count() > 1:
    # The probe embeds the train set on this process's devices only.
    raise config_lib.ConfigError(
        f'config.probe_every_steps={config.probe_every_steps} needs a single process '
        f'(there are {jax.process_count()}): set it to 0 and run tools/probe.py on the '
        'checkpoints instead')
  _prepare_workdir(workdir, config.resume)
  is_chief = jax.process_index() == 0
  source = data.load_source(config.data)
  split = _load_or_make_split(source, config, workdir, is_chief)

  say = (lambda text: print(text, flush=True)) if is_chief else (lambda text: None)
  data_summary = data.describe(source, split)
  if is_chief:
    _write_json(os.path.join(workdir, data.SUMMARY_FILE), data_summary)
  say(data.format_summary(data_summary))
  evaluates = data_summary['evaluation']
  learner = Learner(config, source.num_classes, source.image_shape,
                    unlabeled_pool_size=data.unlabeled_pool_size(source))
  meta = checkpoint_lib.state_meta(config, source.num_classes, source.image_shape)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     max_to_keep=config.keep_checkpoints,
                                     primary=is_chief)
  host_state = learner.init_host_state()
  train_iter = data.make_train_iterator(
      source, split, config, num_devices=learner.num_devices,
      process_index=jax.process_index(), process_count=jax.process_count())
  start_step, wall_before = 0, 0.0
  if ckpt.latest_step() is not None:
    host_state, data_state, saved_step = ckpt.restore_latest(host_state, meta)
    train_iter.set_state(data_state['iterator'])
    start_step, wall_before = int(host_state.step), float(data_state.get('wall_s', 0.0))
    say(f'Resuming from {ckpt.directory}/{saved_step}')
  if is_chief:
    # Lines a killed attempt logged after the step resumed from (or a line it
    # left half-written) would be logged twice.
    metrics_lib.truncate_after(workdir, start_step)
  if is_chief:
    if start_step == 0 or not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
      _write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
  state = learner.replicate(host_state)
  del host_state

  writer = metrics_lib.MetricWriter(workdir, enabled=is_chief)
  total = config.num_train_steps
  stop = total if max_steps is None else min(total, max_steps)
  images_per_step = config.batch_size * (1 + config.uratio)
  progress = Progress(total, start_step, enabled=is_chief)
  t_start = time.time()
  window = []  # This logging window's per-step metrics, still on device.

  def eval_batches():
    return data.make_eval_iterator(
        source, config, num_devices=learner.num_devices,
        process_index=jax.process_index(), process_count=jax.process_count())

  def evaluate(step):
    result = evaluation.evaluate_dataset(learner, state, eval_batches())
    writer.write(step, 'eval', dict(top1=result['top1'], loss=result['loss']))
    progress.line(f"eval step {step}: top1 {result['top1']:.4f} loss {result['loss']:.4f} "
                  f"({result['count']} images)")
    return result

  def probe(step):
    result = probe_lib.probe_state(learner, state, source, split.labeled_indices,
                                   max_train=config.probe_max_train)
    writer.write(step, 'probe', {k: v for k, v in result.items()
                                 if isinstance(v, (int, float))})  # Lists: tools/probe.py.
    progress.line(f"probe step {step}: head {result['head_top1']:.4f} probe "
                  f"{result['probe_top1']:.4f} (labeled only {result['probe_labeled_top1']:.4f}) "
                  f"kNN {result['knn_top1']:.4f}")

  def save(step):
    data_state = dict(iterator=train_iter.get_state(),
                      wall_s=wall_before + time.time() - t_start)
    ckpt.save(step, learner.host(state), data_state, meta)

  last_metrics = {}
  window_start = start_step + 1  # The step of window[0].
  fetched = []  # The window's metrics already on the host (checked).

  def check_window():
    """Fetches the window's metrics; stops the run at a non-finite one."""
    nonlocal window, window_start
    history = [{k: float(v) for k, v in learner.host(m).items()} for m in window]
    steps = range(window_start, window_start + len(history))
    window, window_start = [], window_start + len(history)
    fetched.extend(history)
    bad = first_non_finite(steps, history)
    if bad is not None:
      bad_step, key, value = bad
      try:
        ckpt.close()
        also = ''
      except checkpoint_lib.CheckpointError as e:  # Report it, but not instead of the NaN.
        also = f'; also, {e}'
      writer.close()
      raise NonFiniteError(
          f'{key} is {value} at step {bad_step}; stopped without writing a checkpoint after '
          f'it (the latest, step {ckpt.latest_step()}, is from before): lower '
          f'optim.learning_rate (now {config.optim.learning_rate}) or check the data{also}')

  def take_window():
    check_window()
    history = list(fetched)
    fetched.clear()
    return history

  early = []  # A batch taken before the loop (to compile with) is trained on first.
  if jax.process_count() > 1 and start_step < stop:
    early.append(next(train_iter))
    _compile_collectives(learner, config, state, early[0],
                         next(iter(eval_batches())) if evaluates else None)
  distributed.barrier('layermatch_train_start')
  stop_request = preemption.StopRequest()
  with stop_request:
    for step in range(start_step + 1, stop + 1):
      batch = early.pop() if early else next(train_iter)
      diagnostics = config.grad_norms_by_term and step % config.log_every_steps == 0
      state, step_metrics = learner.step_fn(diagnostics)(state, batch)
      window.append(step_metrics)
      if step == start_step + 1:
        jax.block_until_ready(step_metrics)
        progress.started(step)
      progress.bar(step)
      if step % config.log_every_steps == 0 or step == stop:
        history = take_window()
        last_metrics = metrics_lib.mean_metrics(history)
        steps_per_s, eta = progress.timing(step)
        last_metrics['img_per_sec'] = steps_per_s * images_per_step
        writer.write(step, 'train', last_metrics)
        progress.line(_log_line(step, total, last_metrics, last_metrics['img_per_sec'], eta))
      if evaluates and (step % config.eval_every_steps == 0 or step == total):
        evaluate(step)
      if (evaluates and config.probe_every_steps
          and (step % config.probe_every_steps == 0 or step == total)):
        probe(step)
      preempted = stop_request.requested(step)
      if step % config.checkpoint_every_steps == 0 or step == stop or preempted:
        check_window()  # Never checkpoint a state after a non-finite step.
        save(step)
      if preempted:
        ckpt.close()
        writer.close()
        say(f'Stopped by {stop_request.name} after step {step}: checkpoint '
            f'{ckpt.directory}/{step} written. Run the same command again to resume.')
        return dict(last_metrics, preempted=stop_request.name,
                    exit_status=stop_request.exit_status, step=step)
  writer.flush()

  done = stop == total
  ckpt.close()
  if not done:
    writer.close()
    return last_metrics
  wall_s = wall_before + time.time() - t_start
  writer.close()
  if not is_chief:
    return last_metrics
  summary = metrics_lib.summarize(metrics_lib.read_metrics(workdir, 'eval'), total, wall_s)
  _write_json(os.path.join(workdir, SUMMARY_FILE), summary)
  if summary['num_evals']:
    print(f"Done: final top1 {summary['final_top1']:.4f}, best {summary['best_top1']:.4f}, "
          f"median of last {min(20, summary['num_evals'])} evals "
          f"{summary['median_last_top1']:.4f}; {wall_s:.0f} s", flush=True)
  else:
    print(f'Done, without evaluation (no test images); {wall_s:.0f} s', flush=True)
  return summary
