"""The training loop: init or resume, pmapped steps, evaluation, logs, checkpoints.

`train_and_evaluate(config, workdir)` is what `main.py` runs and what a notebook
can call. Workdir contents (DESIGN.md section 3): config.json, splits/,
data_summary.json (what the data turned out to be: data/summary.py),
metrics.jsonl, TensorBoard events, checkpoints/, summary.json.
"""

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

import jax

from layermatch_jax import checkpoint as checkpoint_lib
from layermatch_jax import cli_util
from layermatch_jax import config_lib, data, distributed, evaluation
from layermatch_jax import metrics as metrics_lib
from layermatch_jax import prefetch, preemption
from layermatch_jax import probe as probe_lib
from layermatch_jax.learner import Learner

SUMMARY_FILE = 'summary.json'
CONFIG_FILE = 'config.json'


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked."""


class NonFiniteError(ValueError):
  """A loss or gradient became NaN or infinite; no checkpoint was written after it."""


def _prepare_workdir(workdir: str, resume: bool):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
      f'--workdir={workdir} is a file: give a directory (new or a run to resume)'
    )
  if not resume and os.path.isdir(workdir):
    held = [
      f
      for f in (
        CONFIG_FILE,
        metrics_lib.METRICS_FILE,
        'checkpoints',
        SUMMARY_FILE,
      )
      if os.path.exists(os.path.join(workdir, f))
    ]
    if held:
      raise WorkdirError(
        f'--workdir={workdir} already holds a run ({", ".join(held)}) and '
        'config.resume=False does not overwrite it: give a new --workdir, or drop '
        '--config.resume=False to continue that run'
      )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
      f'--workdir={workdir} cannot be created ({e.strerror or e}): '
      'give a directory you can write to'
    ) from e


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
        'num_labels'
      )
    return split
  split = data.get_split(source, config)
  if is_chief:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data.save_split(path, split)
  return split


def _check_config(config):
  config_lib.validate(config)
  if config.probe_every_steps and jax.process_count() > 1:
    # The probe embeds the train set on this process's devices only.
    raise config_lib.ConfigError(
      f'config.probe_every_steps={config.probe_every_steps} needs a single '
      f'process (there are {jax.process_count()}): set it to 0 and run '
      'tools/probe.py on the checkpoints instead'
    )


@dataclasses.dataclass(frozen=True)
class _Run:
  """What the loop's helpers share, set up once by `_set_up`."""

  config: Any
  workdir: str
  is_chief: bool  # Process 0: the one that prints and writes the logs.
  source: data.Source
  split: data.Split
  learner: Learner
  ckpt: checkpoint_lib.Checkpointer
  meta: dict  # What a checkpoint must agree on (checkpoint.state_meta).
  train_iter: prefetch.DevicePrefetch  # Its state: after the last batch taken.
  eval_pass: Optional[Callable]  # A fresh pass over the test set; None: none.
  writer: metrics_lib.MetricWriter
  progress: metrics_lib.Progress


def _set_up(config, workdir: str) -> _Run:
  """The data (the workdir's own split when resuming), its summary, the
  learner, the checkpointer, the input pipeline and the logs."""
  is_chief = jax.process_index() == 0
  source = data.load_source(config.data)
  split = _load_or_make_split(source, config, workdir, is_chief)
  summary = data.describe(source, split)
  if is_chief:
    path = os.path.join(workdir, data.SUMMARY_FILE)
    cli_util.write_json(path, summary, indent=2, sort_keys=True)
    print(data.format_summary(summary), flush=True)
  learner = Learner(
    config,
    source.num_classes,
    source.image_shape,
    unlabeled_pool_size=data.unlabeled_pool_size(source),
  )
  processes = dict(
    process_index=jax.process_index(), process_count=jax.process_count()
  )
  eval_pass = functools.partial(
    data.make_eval_iterator,
    source,
    config,
    num_devices=learner.num_devices,
    **processes,
  )
  return _Run(
    config=config,
    workdir=workdir,
    is_chief=is_chief,
    source=source,
    split=split,
    learner=learner,
    ckpt=checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'),
      max_to_keep=config.keep_checkpoints,
      primary=is_chief,
    ),
    meta=checkpoint_lib.state_meta(
      config, source.num_classes, source.image_shape
    ),
    train_iter=prefetch.DevicePrefetch(
      data.make_train_iterator(
        source, split, config, num_devices=learner.num_devices, **processes
      ),
      int(config.data.get('device_prefetch', 2)),
      learner.devices,
    ),
    eval_pass=eval_pass if summary['evaluation'] else None,
    writer=metrics_lib.MetricWriter(workdir, enabled=is_chief),
    progress=metrics_lib.Progress(config.num_train_steps, enabled=is_chief),
  )


def _init_or_resume(run: _Run):
  """(replicated state, first step to run, wall seconds of earlier attempts).

  A resume restores the state and the input position from the latest
  checkpoint.
  """
  resuming = run.ckpt.latest_step() is not None
  host_state = run.learner.init_host_state(pretrained=not resuming)
  start_step, wall_before = 0, 0.0
  if resuming:
    host_state, data_state, saved = run.ckpt.restore_latest(
      host_state, run.meta
    )
    run.train_iter.set_state(data_state['iterator'])
    start_step = int(host_state.step)
    wall_before = float(data_state.get('wall_s', 0.0))
    if run.is_chief:
      print(f'Resuming from {run.ckpt.directory}/{saved}', flush=True)
  if run.is_chief:
    # Lines a killed attempt logged after the step resumed from (or a line it
    # left half-written) would be logged twice.
    metrics_lib.truncate_after(run.workdir, start_step)
    path = os.path.join(run.workdir, CONFIG_FILE)
    if start_step == 0 or not os.path.exists(path):
      cli_util.write_json(path, run.config.to_dict(), indent=2, sort_keys=True)
  return run.learner.replicate(host_state), start_step, wall_before


def _compile_collectives(learner, config, state, batch, eval_batch):
  """Compiles every function that holds a collective, before the processes meet.

  With several processes, CPU collectives (gloo) fail when the processes enter
  one more than 30 s apart ("GetKeyValue() timed out"), and on a loaded machine
  compile times alone differ by more. Compiled here, each function's first call
  finds its executable ready, so the processes enter the collective together.
  """
  diagnostics_at = {
    bool(config.grad_norms_by_term)
  }  # The step variant of log steps.
  if config.log_every_steps > 1:
    diagnostics_at.add(False)
  for diagnostics in sorted(diagnostics_at):
    learner.step_fn(diagnostics).lower(state, batch).compile()
  if eval_batch is not None:
    evaluation.eval_step_fn(learner).lower(
      state, evaluation.eval_inputs(eval_batch)
    ).compile()


def _compile_before_meeting(run: _Run, state) -> list:
  """With several processes: the first batch, taken to compile with."""
  if jax.process_count() == 1:
    return []
  batch = next(run.train_iter)
  eval_batch = next(iter(run.eval_pass())) if run.eval_pass else None
  _compile_collectives(run.learner, run.config, state, batch, eval_batch)
  return [batch]


def _due(step: int, every: int, last: int) -> bool:
  return bool(every) and (step % every == 0 or step == last)


def _train_step(run: _Run, state, batch, step: int):
  """The pmapped step; log steps also split the gradient norms by loss term."""
  config = run.config
  diagnostics = config.grad_norms_by_term and step % config.log_every_steps == 0
  return run.learner.step_fn(diagnostics)(state, batch)


def _fetch_checked(run: _Run, window: metrics_lib.MetricWindow):
  """Fetches the window's metrics; a non-finite one ends the run."""
  bad = window.fetch()
  if bad is None:
    return
  bad_step, key, value = bad
  try:
    run.ckpt.close()
    also = ''
  except checkpoint_lib.CheckpointError as e:  # Reported, but after the NaN.
    also = f'; also, {e}'
  run.writer.close()
  raise NonFiniteError(
    f'{key} is {value} at step {bad_step}; stopped without writing a '
    f'checkpoint after it (the latest, step {run.ckpt.latest_step()}, is from '
    f'before): lower optim.learning_rate (now '
    f'{run.config.optim.learning_rate}) or check the data{also}'
  )


def _log_train(run: _Run, step: int, window) -> dict:
  """The window's mean metrics with the throughput, logged and printed."""
  _fetch_checked(run, window)
  config = run.config
  metrics = metrics_lib.mean_metrics(window.take())
  steps_per_s, eta = run.progress.timing(step)
  images_per_step = config.batch_size * (1 + config.uratio)
  metrics['img_per_sec'] = steps_per_s * images_per_step
  run.writer.write(step, 'train', metrics)
  line = metrics_lib.train_line(step, config.num_train_steps, metrics, eta)
  run.progress.line(line)
  return metrics


def _evaluate(run: _Run, step: int, state):
  result = evaluation.evaluate_dataset(run.learner, state, run.eval_pass())
  run.writer.write(step, 'eval', dict(top1=result['top1'], loss=result['loss']))
  run.progress.line(
    f'eval step {step}: top1 {result["top1"]:.4f} loss {result["loss"]:.4f} '
    f'({result["count"]} images)'
  )


def _probe(run: _Run, step: int, state):
  result = probe_lib.probe_state(
    run.learner,
    state,
    run.source,
    run.split.labeled_indices,
    max_train=run.config.probe_max_train,
  )
  # Numbers only: the per-class lists are tools/probe.py's.
  numbers = {k: v for k, v in result.items() if isinstance(v, (int, float))}
  run.writer.write(step, 'probe', numbers)
  run.progress.line(
    f'probe step {step}: head {result["head_top1"]:.4f} probe '
    f'{result["probe_top1"]:.4f} (labeled only '
    f'{result["probe_labeled_top1"]:.4f}) kNN {result["knn_top1"]:.4f}'
  )


def _save(run: _Run, step: int, state, wall_s: float):
  data_state = dict(iterator=run.train_iter.get_state(), wall_s=wall_s)
  run.ckpt.save(step, run.learner.host(state), data_state, run.meta)


def _preempted(run: _Run, step: int, stop_request, last_metrics) -> dict:
  run.ckpt.close()
  run.writer.close()
  if run.is_chief:
    print(
      f'Stopped by {stop_request.name} after step {step}: checkpoint '
      f'{run.ckpt.directory}/{step} written. Run the same command again to '
      'resume.',
      flush=True,
    )
  return dict(
    last_metrics,
    preempted=stop_request.name,
    exit_status=stop_request.exit_status,
    step=step,
  )


def _finish(run: _Run, stop: int, last_metrics, wall_s: float) -> dict:
  """Closes the run; a completed run's summary.json is written and returned."""
  run.writer.flush()
  run.ckpt.close()
  run.writer.close()
  total = run.config.num_train_steps
  if stop != total or not run.is_chief:
    return last_metrics
  evals = metrics_lib.read_metrics(run.workdir, 'eval')
  summary = metrics_lib.summarize(evals, total, wall_s)
  path = os.path.join(run.workdir, SUMMARY_FILE)
  cli_util.write_json(path, summary, indent=2, sort_keys=True)
  if summary['num_evals']:
    print(
      f'Done: final top1 {summary["final_top1"]:.4f}, best '
      f'{summary["best_top1"]:.4f}, median of last '
      f'{min(20, summary["num_evals"])} evals '
      f'{summary["median_last_top1"]:.4f}; {wall_s:.0f} s',
      flush=True,
    )
  else:
    print(
      f'Done, without evaluation (no test images); {wall_s:.0f} s', flush=True
    )
  return summary


def train_and_evaluate(
  config, workdir: str, max_steps: Optional[int] = None
) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  `max_steps` stops early (after that global step) without finishing the run,
  as a preemption would; the summary is written only when the run completes.
  Returns the summary (or, when stopped early, the latest metrics).
  """
  _check_config(config)  # Bad input fails before anything is written.
  _prepare_workdir(workdir, config.resume)
  run = _set_up(config, workdir)
  state, start_step, wall_before = _init_or_resume(run)

  total = config.num_train_steps
  stop = total if max_steps is None else min(total, max_steps)
  window = metrics_lib.MetricWindow(start_step + 1, run.learner.host)
  clock, last_metrics = time.time() - wall_before, {}  # Wall s = now - clock.
  early = _compile_before_meeting(run, state) if start_step < stop else []
  distributed.barrier('layermatch_train_start')
  with preemption.StopRequest() as stop_request:
    for step in range(start_step + 1, stop + 1):
      batch = early.pop() if early else next(run.train_iter)
      state, step_metrics = _train_step(run, state, batch, step)
      window.append(step_metrics)
      run.progress.after_step(step, step_metrics)
      if _due(step, config.log_every_steps, stop):
        last_metrics = _log_train(run, step, window)
      if run.eval_pass and _due(step, config.eval_every_steps, total):
        _evaluate(run, step, state)
      if run.eval_pass and _due(step, config.probe_every_steps, total):
        _probe(run, step, state)
      preempted = stop_request.requested(step)
      if _due(step, config.checkpoint_every_steps, stop) or preempted:
        _fetch_checked(run, window)  # Never save after a non-finite step.
        _save(run, step, state, time.time() - clock)
      if preempted:
        return _preempted(run, step, stop_request, last_metrics)
  return _finish(run, stop, last_metrics, time.time() - clock)
