"""A training workdir read back: its config, data, split and a checkpoint's state.

What the tools that look at a finished (or running) run share:

  run = saved_run.SavedRun('/tmp/demo')
  run.config, run.source, run.split, run.learner, run.steps
  state, step = run.restore(step=None)    # latest checkpoint, replicated

Bad input raises `RunError` with a one-line message that says what to do;
nothing in the workdir is written.
"""

import json
import os
from typing import Any, List, Optional, Tuple

CONFIG_FILE = 'config.json'  # The trainer's name for it (train.CONFIG_FILE).


class RunError(ValueError):
  """A workdir, step or checkpoint that cannot be read as asked."""


def load_config(workdir: str, notes: Optional[list] = None):
  """The run's config from WORKDIR/config.json (tuples come back as lists).

  Keys the run predates are taken from configs/default.py and named in `notes`.
  """
  if not os.path.isdir(workdir):
    raise RunError(f'--workdir={workdir} is not a directory: give a training workdir')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise RunError(f'{path} does not exist: --workdir must be a workdir written by '
                   'layermatch_jax.main')
  import ml_collections  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise RunError(f'{path} is not a readable config: {e}') from e
  if not isinstance(raw, dict):
    raise RunError(f'{path} is not a config: a JSON object is expected, got {type(raw).__name__}')
  config = ml_collections.ConfigDict(raw)
  from configs import default  # pylint: disable=g-import-not-at-top
  added = fill_missing(config, default.get_config())
  if added and notes is not None:
    # A run saved before these keys existed; the code now reads them.
    notes.append(f'note: {path} lacks {", ".join(added)}: using configs/default.py values')
  return config


def fill_missing(config, defaults, prefix='') -> list:
  """Adds keys of `defaults` that `config` lacks (in place); returns their names."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  added = []
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
      added.append(prefix + key)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        config[key], ml_collections.ConfigDict):
      added += fill_missing(config[key], value, f'{prefix}{key}.')
  return added


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def saved_steps(workdir: str) -> List[int]:
  """The steps with a checkpoint in WORKDIR, ascending (RunError if none)."""
  ckpt_dir = checkpoint_dir(workdir)
  # Checked here: orbax's manager would create a missing directory.
  if not os.path.isdir(ckpt_dir):
    raise RunError(f'no checkpoint in {workdir}: {ckpt_dir} does not exist')
  from layermatch_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir, async_save=False, read_only=True)
  try:
    steps = sorted(ckpt.all_steps())
  finally:
    ckpt.close()
  if not steps:
    raise RunError(f'no checkpoint in {ckpt_dir}: train first, or give another --workdir')
  return steps


def resolve_step(workdir: str, step: Optional[int] = None,
                 steps: Optional[List[int]] = None) -> int:
  """`step` if WORKDIR has a checkpoint of it (None: the latest); RunError otherwise."""
  steps = saved_steps(workdir) if steps is None else steps
  if step is None:
    return steps[-1]
  if step not in steps:
    raise RunError(f'--step={step} has no checkpoint in {checkpoint_dir(workdir)}: saved steps '
                   f'are {", ".join(map(str, steps))}')
  return step


class SavedRun:
  """A workdir opened for reading: config, data, split and a Learner, built once;
  `restore(step)` then reads any of its checkpoints.

    run = SavedRun(workdir)
    state, step = run.restore()            # latest; run.steps lists the saved ones
  """

  def __init__(self, workdir: str, notes: Optional[list] = None, config=None):
    """`config` (from load_config) saves reading it twice. The eval batch size is
    rounded up to a multiple of this host's device count (it changes no result)."""
    self.workdir = workdir
    self.config = config if config is not None else load_config(workdir, notes)
    self.steps = saved_steps(workdir)
    # Imported late: the cheap checks above answer without starting JAX.
    import jax  # pylint: disable=g-import-not-at-top
    from layermatch_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    from layermatch_jax import config_lib, data  # pylint: disable=g-import-not-at-top
    from layermatch_jax.learner import Learner  # pylint: disable=g-import-not-at-top
    self._expected = (config_lib.ConfigError, data.DataError, checkpoint_lib.CheckpointError)
    config = self.config
    try:
      config_lib.validate(config)
      self.source = data.load_source(config.data)
      split_file = data.split_path(workdir)
      self.split = data.load_split(split_file, self.source) if os.path.exists(split_file) else None
      # The pool size shapes some pseudo-label policies' state (FlexMatch).
      self.learner = Learner(config, self.source.num_classes, self.source.image_shape,
                             unlabeled_pool_size=data.unlabeled_pool_size(self.source))
    except self._expected as e:
      raise RunError(str(e)) from e
    d = self.learner.num_devices
    if config.eval_batch_size % d:
      config.eval_batch_size = -(-config.eval_batch_size // d) * d
    self._meta = checkpoint_lib.state_meta(config, self.source.num_classes,
                                           self.source.image_shape)
    # The structure restores fill: shapes and dtypes only (jax.eval_shape), since
    # compiling the initialisers costs seconds to minutes on a CPU.
    self._template = jax.eval_shape(self.learner.init_host_state)

  def restore(self, step: Optional[int] = None) -> Tuple[Any, int]:
    """(train state replicated over the learner's devices, step); default the latest."""
    step = resolve_step(self.workdir, step, self.steps)
    from layermatch_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    ckpt = checkpoint_lib.Checkpointer(checkpoint_dir(self.workdir), async_save=False,
                                       read_only=True)
    try:
      host_state, _ = ckpt.restore(self._template, self._meta, step=step)
    except self._expected as e:
      raise RunError(str(e)) from e
    except ValueError as e:
      # orbax's tree mismatch: the meta agrees but the state's structure does
      # not, i.e. the checkpoint was written by another version of the code.
      raise RunError(f'checkpoint {checkpoint_dir(self.workdir)}/{step} does not fit the train '
                     f'state this code builds (written by another version?): {e}') from e
    finally:
      ckpt.close()
    return self.learner.replicate(host_state), int(step)
