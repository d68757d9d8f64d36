"""Checkpoints with orbax: the unreplicated TrainState, the data iterator, metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `meta` records what the
state was built from (model, classes, algorithm, image shape), so a resume with an
incompatible config is refused instead of loading garbage.
"""

import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """A checkpoint that cannot be used with this config."""


def state_meta(config, num_classes: int, image_shape) -> dict:
  """What must agree between the run that wrote a checkpoint and one that reads it."""
  from layermatch_jax.algorithms import presets  # pylint: disable=g-import-not-at-top
  return dict(model=config.model.name, num_classes=int(num_classes),
              image_shape=[int(s) for s in image_shape], algorithm=config.algorithm,
              policy=presets.resolve_policy(config))


class Checkpointer:
  """A thin wrapper over orbax's CheckpointManager for one workdir."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict, meta: dict):
    """Saves a host (unreplicated) state; returns at once when async."""
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)))

  def restore(self, template, meta: dict, step: Optional[int] = None) -> Tuple[Any, dict]:
    """Restores (state, data_state) into the structure of `template` (host arrays)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    saved_meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    if saved_meta != meta:
      diff = {k: (saved_meta.get(k), meta.get(k)) for k in set(meta) | set(saved_meta)
              if saved_meta.get(k) != meta.get(k)}
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} was written by an incompatible config '
          f'(saved vs now: {diff}); use another --workdir or the matching config')
    abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except ValueError as e:
      # orbax reports a different tree (e.g. a state from an older version of
      # this code) as a multi-line ValueError: keep its first line.
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} does not match the train state this code '
          f'builds ({first}); use another --workdir') from e
    return restored.state, restored.data

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
