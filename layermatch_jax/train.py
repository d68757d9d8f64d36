"""The training loop: init or resume, pmapped steps, evaluation, logs, checkpoints.

`train_and_evaluate(config, workdir)` is what `main.py` runs and what a notebook
can call. Workdir contents (DESIGN.md section 3): config.json, splits/,
data_summary.json (what the data turned out to be: data/summary.py),
metrics.jsonl, TensorBoard events, checkpoints/, summary.json.
"""

import functools
import os
import time
from typing import Optional

import jax

from layermatch_jax import checkpoint as checkpoint_lib
from layermatch_jax import cli_util
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


def _check_config(config):
  config_lib.validate(config)
  if config.probe_every_steps and jax.process_count() > 1:
    # The probe embeds the train set on this process's devices only.
    raise config_lib.ConfigError(
        f'config.probe_every_steps={config.probe_every_steps} needs a single process '
        f'(there are {jax.process_count()}): set it to 0 and run tools/probe.py on the '
        'checkpoints instead')


def _summarize_data(source, split, workdir: str, is_chief: bool) -> bool:
  """Prints the data summary and keeps it in the workdir; whether there is a test set."""
  summary = data.describe(source, split)
  if is_chief:
    cli_util.write_json(os.path.join(workdir, data.SUMMARY_FILE), summary, indent=2,
                        sort_keys=True)
    print(data.format_summary(summary), flush=True)
  return summary['evaluation']


def _init_or_resume(learner, ckpt, meta, train_iter, config, workdir: str, is_chief: bool):
  """(replicated state, first step to run, wall seconds of earlier attempts).

  A resume restores the state and the input position from the latest checkpoint.
  """
  host_state = learner.init_host_state()
  start_step, wall_before = 0, 0.0
  if ckpt.latest_step() is not None:
    host_state, data_state, saved_step = ckpt.restore_latest(host_state, meta)
    train_iter.set_state(data_state['iterator'])
    start_step, wall_before = int(host_state.step), float(data_state.get('wall_s', 0.0))
    if is_chief:
      print(f'Resuming from {ckpt.directory}/{saved_step}', flush=True)
  if is_chief:
    # Lines a killed attempt logged after the step resumed from (or a line it
    # left half-written) would be logged twice.
    metrics_lib.truncate_after(workdir, start_step)
    if start_step == 0 or not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
      cli_util.write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict(), indent=2, sort_keys=True)
  return learner.replicate(host_state), start_step, wall_before


def _eval_pass(learner, source, config):
  """A function giving a fresh pass over the test set (one per evaluation)."""
  return functools.partial(
      data.make_eval_iterator, source, config, num_devices=learner.num_devices,
      process_index=jax.process_index(), process_count=jax.process_count())


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


def _compile_before_meeting(learner, config, state, train_iter, eval_pass):
  """With several processes: the first batch, taken to compile the collectives with."""
  if jax.process_count() == 1:
    return []
  batch = next(train_iter)
  _compile_collectives(learner, config, state, batch,
                       next(iter(eval_pass())) if eval_pass is not None else None)
  return [batch]


def _due(step: int, every: int, last: int) -> bool:
  return step % every == 0 or step == last


def _fetch_checked(window, ckpt, writer, config):
  """Fetches the window's metrics; a non-finite one ends the run with NonFiniteError."""
  bad = window.fetch()
  if bad is None:
    return
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


def _log_train(step, window, writer, progress, config) -> dict:
  """The window's mean metrics with the throughput, logged and printed."""
  metrics = metrics_lib.mean_metrics(window.take())
  steps_per_s, eta = progress.timing(step)
  metrics['img_per_sec'] = steps_per_s * config.batch_size * (1 + config.uratio)
  writer.write(step, 'train', metrics)
  progress.line(metrics_lib.train_line(step, config.num_train_steps, metrics, eta))
  return metrics


def _evaluate(step, learner, state, eval_pass, writer, progress):
  result = evaluation.evaluate_dataset(learner, state, eval_pass())
  writer.write(step, 'eval', dict(top1=result['top1'], loss=result['loss']))
  progress.line(f"eval step {step}: top1 {result['top1']:.4f} loss {result['loss']:.4f} "
                f"({result['count']} images)")


def _probe(step, learner, state, source, split, writer, progress, config):
  result = probe_lib.probe_state(learner, state, source, split.labeled_indices,
                                 max_train=config.probe_max_train)
  writer.write(step, 'probe', {k: v for k, v in result.items()
                               if isinstance(v, (int, float))})  # Lists: tools/probe.py.
  progress.line(f"probe step {step}: head {result['head_top1']:.4f} probe "
                f"{result['probe_top1']:.4f} (labeled only {result['probe_labeled_top1']:.4f}) "
                f"kNN {result['knn_top1']:.4f}")


def _save(step, learner, state, train_iter, ckpt, meta, wall_s: float):
  data_state = dict(iterator=train_iter.get_state(), wall_s=wall_s)
  ckpt.save(step, learner.host(state), data_state, meta)


def _preempted(step, stop_request, ckpt, writer, last_metrics, is_chief: bool) -> dict:
  ckpt.close()
  writer.close()
  if is_chief:
    print(f'Stopped by {stop_request.name} after step {step}: checkpoint '
          f'{ckpt.directory}/{step} written. Run the same command again to resume.', flush=True)
  return dict(last_metrics, preempted=stop_request.name,
              exit_status=stop_request.exit_status, step=step)


def _finish(stop, ckpt, writer, last_metrics, workdir, total, wall_s, is_chief) -> dict:
  """Closes the run; a completed run's summary.json is written and returned."""
  writer.flush()
  ckpt.close()
  writer.close()
  if stop != total or not is_chief:
    return last_metrics
  summary = metrics_lib.summarize(metrics_lib.read_metrics(workdir, 'eval'), total, wall_s)
  cli_util.write_json(os.path.join(workdir, SUMMARY_FILE), summary, indent=2, sort_keys=True)
  if summary['num_evals']:
    print(f"Done: final top1 {summary['final_top1']:.4f}, best {summary['best_top1']:.4f}, "
          f"median of last {min(20, summary['num_evals'])} evals "
          f"{summary['median_last_top1']:.4f}; {wall_s:.0f} s", flush=True)
  else:
    print(f'Done, without evaluation (no test images); {wall_s:.0f} s', flush=True)
  return summary


def train_and_evaluate(config, workdir: str, max_steps: Optional[int] = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint.

  `max_steps` stops early (after that global step) without finishing the run,
  as a preemption would; the summary is written only when the run completes.
  Returns the summary (or, when stopped early, the latest metrics).
  """
  _check_config(config)  # Bad input fails before anything is written.
  _prepare_workdir(workdir, config.resume)
  is_chief = jax.process_index() == 0

  # Data: the source, the labeled split (the workdir's own when resuming).
  source = data.load_source(config.data)
  split = _load_or_make_split(source, config, workdir, is_chief)
  evaluates = _summarize_data(source, split, workdir, is_chief)
  learner = Learner(config, source.num_classes, source.image_shape,
                    unlabeled_pool_size=data.unlabeled_pool_size(source))
  eval_pass = _eval_pass(learner, source, config) if evaluates else None

  # State: a fresh init, or the latest checkpoint with its input position.
  meta = checkpoint_lib.state_meta(config, source.num_classes, source.image_shape)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                     max_to_keep=config.keep_checkpoints, primary=is_chief)
  train_iter = data.make_train_iterator(
      source, split, config, num_devices=learner.num_devices,
      process_index=jax.process_index(), process_count=jax.process_count())
  state, start_step, wall_before = _init_or_resume(learner, ckpt, meta, train_iter, config,
                                                   workdir, is_chief)

  # The loop: a step, then whatever is due at that step.
  total = config.num_train_steps
  stop = total if max_steps is None else min(total, max_steps)
  writer = metrics_lib.MetricWriter(workdir, enabled=is_chief)
  progress = metrics_lib.Progress(total, start_step, enabled=is_chief)
  window = metrics_lib.MetricWindow(start_step + 1, learner.host)
  t_start, last_metrics = time.time(), {}
  early = (_compile_before_meeting(learner, config, state, train_iter, eval_pass)
           if start_step < stop else [])
  distributed.barrier('layermatch_train_start')
  with preemption.StopRequest() as stop_request:
    for step in range(start_step + 1, stop + 1):
      batch = early.pop() if early else next(train_iter)
      diagnostics = config.grad_norms_by_term and step % config.log_every_steps == 0
      state, step_metrics = learner.step_fn(diagnostics)(state, batch)
      window.append(step_metrics)
      progress.after_step(step, step_metrics)
      if _due(step, config.log_every_steps, stop):
        _fetch_checked(window, ckpt, writer, config)
        last_metrics = _log_train(step, window, writer, progress, config)
      if evaluates and _due(step, config.eval_every_steps, total):
        _evaluate(step, learner, state, eval_pass, writer, progress)
      if evaluates and config.probe_every_steps and _due(step, config.probe_every_steps, total):
        _probe(step, learner, state, source, split, writer, progress, config)
      preempted = stop_request.requested(step)
      if _due(step, config.checkpoint_every_steps, stop) or preempted:
        _fetch_checked(window, ckpt, writer, config)  # Never save after a non-finite step.
        _save(step, learner, state, train_iter, ckpt, meta, wall_before + time.time() - t_start)
      if preempted:
        return _preempted(step, stop_request, ckpt, writer, last_metrics, is_chief)
  return _finish(stop, ckpt, writer, last_metrics, workdir, total,
                 wall_before + time.time() - t_start, is_chief)
