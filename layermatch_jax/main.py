"""Command line: python -m layermatch_jax.main --config=configs/NAME.py --workdir=DIR.

Config values are overridden with --config.KEY=VALUE. Bad input of any kind ends
with one line `error: ...` on stderr and exit status 2.
"""

import importlib.util
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/NAME.py), optionally :ARG.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the summary.')
flags.mark_flags_as_required(['config', 'workdir'])


def fail(message: str):
  """The one-line error contract: `error: ...` on stderr, exit status 2."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def _unknown_override(argv):
  """The first --config.KEY override naming no key of the config file, as a
  message listing the valid keys at that level; None if all exist."""
  path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if path is None:
    return None
  try:
    spec = importlib.util.spec_from_file_location('_config_for_message', path.split(':')[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    key = arg[len('--config.'):].split('=', 1)[0]
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
    fail(_unknown_override(argv) or (e if isinstance(e, flags.Error) else
                                     f'{type(e).__name__}: {e}'))


def main(argv):
  del argv
  if not FLAGS['verbosity'].present:
    # orbax logs every checkpoint step at INFO; the trainer prints its own progress.
    logging.set_verbosity(logging.WARNING)
  # Imported after flag parsing: a bad flag fails fast, before JAX starts.
  from layermatch_jax import checkpoint, config_lib, data, train  # pylint: disable=g-import-not-at-top
  expected = (config_lib.ConfigError, data.DataError, checkpoint.CheckpointError,
              train.WorkdirError)
  config = FLAGS.config
  if not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a load failure to the first use of the config.
    try:
      config.keys()
    except Exception as e:  # pylint: disable=broad-except
      reason = str(e).strip().splitlines()[-1].strip()
      fail(f'--config={config_flags.get_config_filename(FLAGS["config"])} could not be '
           f'loaded ({reason}); give a path like configs/demo.py')
  try:
    train.train_and_evaluate(config, FLAGS.workdir)
  except expected as e:
    fail(e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
