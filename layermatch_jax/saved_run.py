"""A training workdir read back: its config, data, split and a checkpoint's state.

What the tools that look at a finished (or running) run share:

  run = saved_run.SavedRun('/tmp/demo')
  run.config, run.source, run.split, run.learner, run.steps, run.class_names
  state, step = run.restore(step=None)    # latest checkpoint, replicated

  # Without reading the data, when the run wrote WORKDIR/data_summary.json:
  run = saved_run.SavedRun('/tmp/demo', load_data=False)
  host_state, step = run.restore(replicate=False)

Bad input raises `RunError` with a one-line message that says what to do;
nothing in the workdir is written.
"""

import os
from typing import Any, List, Optional, Tuple

from layermatch_jax import cli_util

CONFIG_FILE = 'config.json'  # The trainer's name for it (train.CONFIG_FILE).
# What the run's data turned out to be, written by the trainer (data.SUMMARY_FILE);
# older runs lack it.
DATA_SUMMARY_FILE = 'data_summary.json'


class RunError(ValueError):
  """A workdir, step or checkpoint that cannot be read as asked."""


def load_config(workdir: str, notes: Optional[list] = None):
  """The run's config from WORKDIR/config.json (tuples come back as lists).

  Keys the run predates are taken from configs/default.py and named in `notes`.
  """
  if not os.path.isdir(workdir):
    raise RunError(
      f'--workdir={workdir} is not a directory: give a training workdir'
    )
  path = os.path.join(workdir, CONFIG_FILE)
  raw = cli_util.read_json(
    path,
    RunError,
    missing='--workdir must be a workdir written by layermatch_jax.main',
  )
  if not isinstance(raw, dict):
    raise RunError(
      f'{path} is not a config: a JSON object is expected, got {type(raw).__name__}'
    )
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(raw)
  cli_util.import_configs()  # An installed command runs outside the checkout.
  from configs import default  # pylint: disable=g-import-not-at-top

  added = fill_missing(config, default.get_config())
  if added and notes is not None:
    # A run saved before these keys existed; the code now reads them.
    notes.append(
      f'note: {path} lacks {", ".join(added)}: using configs/default.py values'
    )
  return config


def load_data_summary(workdir: str) -> Optional[dict]:
  """WORKDIR/data_summary.json, or None for a run that predates it.

  Checks the keys a model needs without the data: class_names (index = class
  id), image_size and unlabeled_pool_size.
  """
  path = os.path.join(workdir, DATA_SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  summary = cli_util.read_json(path, RunError)
  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  names = summary.get('class_names') if isinstance(summary, dict) else None
  if (
    not isinstance(names, list)
    or not names
    or not all(isinstance(n, str) for n in names)
    or not is_int(summary.get('image_size'))
    or summary['image_size'] <= 0
    or not is_int(summary.get('unlabeled_pool_size'))
    or summary['unlabeled_pool_size'] < 0
  ):
    raise RunError(
      f'{path} is not a data summary: class_names (a list of names), image_size '
      'and unlabeled_pool_size are expected; delete it to read the data instead'
    )
  return summary


def fill_missing(config, defaults, prefix='') -> list:
  """Adds keys of `defaults` that `config` lacks (in place); returns their names."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  added = []
  for key, value in defaults.items():
    if key not in config:
      config[key] = value
      added.append(prefix + key)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
      config[key], ml_collections.ConfigDict
    ):
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
    raise RunError(
      f'no checkpoint in {ckpt_dir}: train first, or give another --workdir'
    )
  return steps


def resolve_step(
  workdir: str, step: Optional[int] = None, steps: Optional[List[int]] = None
) -> int:
  """`step` if WORKDIR has a checkpoint of it (None: the latest); RunError otherwise."""
  steps = saved_steps(workdir) if steps is None else steps
  if step is None:
    return steps[-1]
  if step not in steps:
    raise RunError(
      f'--step={step} has no checkpoint in {checkpoint_dir(workdir)}: saved steps '
      f'are {", ".join(map(str, steps))}'
    )
  return step


class SavedRun:
  """A workdir opened for reading: config, data, split and a Learner, built once;
  `restore(step)` then reads any of its checkpoints.

    run = SavedRun(workdir)
    state, step = run.restore()            # latest; run.steps lists the saved ones
  """

  def __init__(
    self,
    workdir: str,
    notes: Optional[list] = None,
    config=None,
    load_data: bool = True,
  ):
    """`config` (from load_config) saves reading it twice. The eval batch size is
    rounded up to a multiple of this host's device count (it changes no result).

    `load_data=False`: when the run wrote WORKDIR/data_summary.json, the class
    names, image shape and pool size come from it and no data is read (`source`
    and `split` are then None); a run without it has its data loaded as usual.
    """
    self.workdir = workdir
    self.config = config if config is not None else load_config(workdir, notes)
    self.steps = saved_steps(workdir)
    self.data_summary = None if load_data else load_data_summary(workdir)
    # Imported late: the cheap checks above answer without starting JAX.
    import jax  # pylint: disable=g-import-not-at-top
    from layermatch_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
    from layermatch_jax import config_lib, data  # pylint: disable=g-import-not-at-top
    from layermatch_jax.learner import Learner  # pylint: disable=g-import-not-at-top

    self._expected = (
      config_lib.ConfigError,
      data.DataError,
      checkpoint_lib.CheckpointError,
    )
    config = self.config
    try:
      config_lib.validate(config)
      if self.data_summary is None:
        self.source = data.load_source(config.data)
        split_file = data.split_path(workdir)
        self.split = (
          data.load_split(split_file, self.source)
          if os.path.exists(split_file)
          else None
        )
        self.class_names = list(self.source.class_names)
        image_shape = self.source.image_shape
        # The pool size shapes some pseudo-label policies' state (FlexMatch).
        pool_size = data.unlabeled_pool_size(self.source)
      else:
        self.source = self.split = None
        self.class_names = list(self.data_summary['class_names'])
        size = self.data_summary['image_size']
        if size != config.data.image_size:
          raise RunError(
            f'{os.path.join(workdir, DATA_SUMMARY_FILE)} has image_size {size} but '
            f'{os.path.join(workdir, CONFIG_FILE)} data.image_size='
            f'{config.data.image_size}: the workdir is inconsistent'
          )
        image_shape = (size, size, 3)  # Sources are always RGB.
        pool_size = self.data_summary['unlabeled_pool_size']
      self.image_shape = tuple(int(s) for s in image_shape)
      self.learner = Learner(
        config,
        len(self.class_names),
        self.image_shape,
        unlabeled_pool_size=pool_size,
      )
    except self._expected as e:
      raise RunError(str(e)) from e
    self._meta = checkpoint_lib.state_meta(
      config, len(self.class_names), self.image_shape
    )
    # The structure restores fill: shapes and dtypes only (jax.eval_shape), since
    # compiling the initialisers costs seconds to minutes on a CPU.
    self._template = jax.eval_shape(self.learner.init_host_state)

  def restore(
    self, step: Optional[int] = None, replicate: bool = True
  ) -> Tuple[Any, int]:
    """(train state replicated over the learner's devices, step); default the latest.

    `replicate=False`: the state as host (numpy) arrays, for one-device use.
    """
    step = resolve_step(self.workdir, step, self.steps)
    from layermatch_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

    ckpt = checkpoint_lib.Checkpointer(
      checkpoint_dir(self.workdir), async_save=False, read_only=True
    )
    try:
      host_state, _ = ckpt.restore(self._template, self._meta, step=step)
    except self._expected as e:
      raise RunError(str(e)) from e
    except ValueError as e:
      # orbax's tree mismatch: the meta agrees but the state's structure does
      # not, i.e. the checkpoint was written by another version of the code.
      raise RunError(
        f'checkpoint {checkpoint_dir(self.workdir)}/{step} does not fit the train '
        f'state this code builds (written by another version?): {e}'
      ) from e
    finally:
      ckpt.close()
    return (
      self.learner.replicate(host_state) if replicate else host_state
    ), int(step)
