"""Command line: python -m layermatch_jax.main --config=configs/NAME.py --workdir=DIR.

Config values are overridden with --config.KEY=VALUE. Bad input of any kind ends
with one line `error: ...` on stderr and exit status 2.
"""

import asyncio
import importlib.util
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from layermatch_jax import cli_util

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config',
  None,
  'Path to a config file (configs/NAME.py), optionally :ARG.',
  lock_config=True,
)
flags.DEFINE_string(
  'workdir', None, 'Directory for checkpoints, logs and the summary.'
)
flags.mark_flags_as_required(['config', 'workdir'])
# Several processes (see distributed.py); a Cloud TPU slice needs none of these.
flags.DEFINE_string(
  'coordinator_address', None, 'HOST:PORT of process 0 (multi-process runs).'
)
flags.DEFINE_integer(
  'num_processes', None, 'Processes in the run (multi-process runs).'
)
flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() without arguments: '
  'it finds its peers itself on Cloud TPU pods and under SLURM.',
)


fail = (
  cli_util.fail
)  # The one-line error contract: `error: ...` on stderr, exit status 2.


def _ignore_callbacks_into_closed_loops():
  """Makes call_soon_threadsafe on a closed asyncio loop a no-op (CLI only).

  After orbax abandons a failed checkpoint read or write, tensorstore still
  completes the abandoned futures; each completion schedules a callback into
  orbax's already closed loop and prints a RuntimeError traceback from C++,
  around the one `error:` line. Nothing can run on a closed loop anyway.
  """
  original = asyncio.BaseEventLoop.call_soon_threadsafe

  def call_soon_threadsafe(self, *args, **kwargs):
    if self.is_closed():
      return None
    return original(self, *args, **kwargs)

  asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe


def _unknown_override(argv):
  """The first --config.KEY override naming no key of the config file, as a
  message listing the valid keys at that level; None if all exist."""
  path = next(
    (a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None
  )
  if path is None:
    return None
  try:
    spec = importlib.util.spec_from_file_location(
      '_config_for_message', path.split(':')[0]
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.') :].split('=', 1)[0]
    node, seen = config, []
    for part in key.split('.'):
      if not hasattr(node, 'keys') or part not in node:
        where = 'config' + ''.join(f'.{p}' for p in seen)
        valid = sorted(node.keys()) if hasattr(node, 'keys') else []
        return f'{arg}: {where} has no key {part!r}; valid keys there: {", ".join(valid)}'
      node, seen = node[part], seen + [part]
  return None


def parse_flags(argv):
  try:
    return FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    # Bad flags, config files that fail to load, overrides that do not apply.
    fail(
      _unknown_override(argv)
      or (e if isinstance(e, flags.Error) else f'{type(e).__name__}: {e}')
    )


def main(argv):
  del argv
  _ignore_callbacks_into_closed_loops()
  if not FLAGS['verbosity'].present:
    # orbax logs every checkpoint step at INFO; the trainer prints its own progress.
    logging.set_verbosity(logging.WARNING)
    # A failed checkpoint write is reported by the trainer as one `error:` line;
    # orbax's background threads would log it again with tracebacks.
    logging.get_absl_logger().addFilter(
      lambda record: f'{os.sep}orbax{os.sep}' not in record.pathname
    )
  # Imported after flag parsing: a bad flag fails fast, before JAX starts.
  from layermatch_jax import distributed  # pylint: disable=g-import-not-at-top

  try:
    distributed.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      auto=FLAGS.distributed,
    )
  except distributed.DistributedError as e:
    fail(e)
  from layermatch_jax import checkpoint, config_lib, data, train  # pylint: disable=g-import-not-at-top

  expected = (
    config_lib.ConfigError,
    data.DataError,
    checkpoint.CheckpointError,
    train.WorkdirError,
    train.NonFiniteError,
  )
  config = FLAGS.config
  if not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a load failure to the first use of the config.
    try:
      config.keys()
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[-1].strip()
      fail(
        f'--config={config_flags.get_config_filename(FLAGS["config"])} could not be '
        f'loaded ({reason}); give a path like configs/demo.py'
      )
  new_workdir = not os.path.exists(FLAGS.workdir)
  try:
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except expected as e:
    if (
      new_workdir
      and os.path.isdir(FLAGS.workdir)
      and not os.listdir(FLAGS.workdir)
    ):
      os.rmdir(FLAGS.workdir)  # A failed start leaves no empty workdir behind.
    try:
      fail(e)
    except SystemExit:
      # Leave without interpreter teardown: tensorstore callbacks of an
      # abandoned checkpoint write would print tracebacks after the error line.
      sys.stdout.flush()
      os._exit(2)  # pylint: disable=protected-access
  if result.get('preempted'):
    # Stopped by SIGTERM/SIGINT after checkpointing: 128 + the signal, as a
    # shell reports a signal, so a supervisor knows the run is not finished.
    sys.exit(result['exit_status'])


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
