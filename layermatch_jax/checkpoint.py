"""Checkpoints with orbax: the unreplicated TrainState, the data iterator, metadata.

Layout: WORKDIR/checkpoints/<step>/{state, data, meta}. `meta` records what the
state and the data stream were built from (model, classes, algorithm, image shape,
batch, seed), so a resume with an incompatible config is refused instead of
loading garbage or silently training on another data order.

Crash safety: orbax writes a step into a temporary directory and renames it when
complete, so a process killed mid-write leaves no step directory behind. Each
step also stores a digest of its arrays. A step that cannot be read back whole
(a damaged or truncated file, a digest that does not match) while an older one
can is moved to WORKDIR/checkpoints.unreadable/<step> (kept, not deleted) and the
older step is used; this is reported on stderr.
"""

import hashlib
import os
import shutil
import sys
import time
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from layermatch_jax.algorithms import presets


class CheckpointError(ValueError):
  """A checkpoint that cannot be used with this config."""


def state_meta(config, num_classes: int, image_shape) -> dict:
  """What must agree between the run that wrote a checkpoint and one that reads it."""
  return dict(
    model=config.model.name,
    num_classes=int(num_classes),
    image_shape=[int(s) for s in image_shape],
    algorithm=config.algorithm,
    policy=presets.resolve_policy(config),
    # The data stream: batch k is a function of these (data/pipeline.py).
    dataset=config.data.name,
    batch_size=int(config.batch_size),
    uratio=int(config.uratio),
    seed=int(config.seed),
  )


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


class UnreadableCheckpoint(CheckpointError):
  """A checkpoint whose files cannot be read back whole (damaged or foreign)."""


DIGEST_KEY = 'state_digest'


def tree_digest(tree) -> str:
  """A hash of every array's bytes, shape and dtype, in tree order.

  orbax keeps no checksums: a file damaged in place can read back as wrong
  numbers without an error. The digest, saved beside the arrays, catches that.
  """
  h = hashlib.blake2b(digest_size=16)
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    if a.dtype.kind in 'biu':
      a = a.astype(
        np.int64
      )  # A scalar step may come back int64 where it was saved int32.
    a = np.ascontiguousarray(a)
    h.update(f'{a.dtype}{a.shape}'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


class Checkpointer:
  """A thin wrapper over orbax's CheckpointManager for one workdir."""

  def __init__(
    self,
    directory: str,
    max_to_keep: int = 3,
    async_save: bool = True,
    primary: bool = True,
    read_only: bool = False,
  ):
    """`primary`: this process may move unreadable steps aside (process 0 of several).

    `read_only`: for tools that look at a run, perhaps while it trains: nothing
    is created, probed, cleaned up or moved (a write in progress is left alone).
    """
    self.directory = os.path.abspath(directory)
    self.primary = primary and not read_only
    self._last_submitted = None
    if not read_only:
      self._check_writable()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        # A reader never saves, so orbax never deletes a step for it.
        max_to_keep=None if read_only else max_to_keep,
        create=not read_only,
        enable_async_checkpointing=async_save,
        # What a killed or failed write left behind is never read: remove it
        # (the trainer does; a reader must not touch a write in progress).
        cleanup_tmp_directories=not read_only,
      ),
    )

  def _check_writable(self):
    """Fails before any training when checkpoints could not be written."""
    probe = os.path.join(self.directory, f'.write-probe-{os.getpid()}')
    try:
      os.makedirs(self.directory, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('ok')
      os.remove(probe)
    except OSError as e:
      raise CheckpointError(
        f'checkpoint directory {self.directory} is not writable ({e.strerror or e}): '
        'give a --workdir you can write to'
      ) from e

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def _write_error(self, step, e) -> CheckpointError:
    try:
      kept = sorted(self._manager.all_steps(read=True))
    except Exception:  # pylint: disable=broad-except
      kept = []
    return CheckpointError(
      f'could not write checkpoint {step} to {self.directory} ({_first_line(e)[:300]}); '
      f'the checkpoints already there ({", ".join(map(str, kept)) or "none"}) are intact: '
      'free space or fix the directory and rerun the command to resume'
    )

  def save(self, step: int, state, data_state: dict, meta: dict):
    """Saves a host (unreplicated) state; returns at once when async.

    An error of this save or of an earlier asynchronous one is raised as a
    CheckpointError (orbax reports a failed background write at the next call).
    """
    data_state = dict(data_state, **{DIGEST_KEY: tree_digest(state)})
    self.wait()  # A failed earlier (asynchronous) write is reported as that step's.
    try:
      self._manager.save(
        int(step),
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta),
        ),
      )
      self._last_submitted = int(step)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e

  def restore_latest(self, template, meta: dict) -> Tuple[Any, dict, int]:
    """Restores the newest readable step: (state, data_state, step).

    Newer steps that cannot be read while an older one can are damaged, not
    incompatible: they are set aside (see the module doc) and reported. When no
    step can be read, nothing is moved and the newest step's problem is raised.
    A step written by an incompatible config is an error at once.
    """
    failed = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(template, meta, step)
      except UnreadableCheckpoint as e:
        failed.append((step, e))
        continue
      for bad_step, error in failed:
        if self.primary:
          self._set_aside(bad_step, error)
      return state, data_state, step
    if failed:
      raise CheckpointError(
        f'{failed[0][1]}; no older step can be read either (nothing was moved): give '
        'another --workdir, or move the checkpoints away to start this one over'
      )
    raise CheckpointError(f'no checkpoint in {self.directory}')

  def _set_aside(self, step: int, error: Exception):
    aside = self.directory + '.unreadable'
    os.makedirs(aside, exist_ok=True)
    target = os.path.join(aside, str(step))
    if os.path.exists(target):
      target += f'.{int(time.time())}'
    shutil.move(os.path.join(self.directory, str(step)), target)
    print(
      f'warning: {error}; moved it to {target} and resumed from an older step',
      file=sys.stderr,
      flush=True,
    )
    self._manager.reload()

  def restore(
    self, template, meta: dict, step: Optional[int] = None
  ) -> Tuple[Any, dict]:
    """Restores (state, data_state) into the structure of `template` (host arrays).

    Raises CheckpointError for a checkpoint of an incompatible config, and its
    subclass UnreadableCheckpoint for one that cannot be read back whole.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    where = f'{self.directory}/{step}'
    try:
      saved_meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
      ).meta
    except Exception as e:  # pylint: disable=broad-except
      raise UnreadableCheckpoint(
        f'checkpoint {where} is unreadable (metadata: '
        f'{type(e).__name__}: {_first_line(e)})'
      ) from e
    if saved_meta != meta:
      diff = {
        k: (saved_meta.get(k), meta.get(k))
        for k in sorted(set(meta) | set(saved_meta))
        if saved_meta.get(k) != meta.get(k)
      }
      raise CheckpointError(
        f'checkpoint {where} was written by an incompatible config '
        f'(saved vs now: {diff}); use another --workdir or the matching config'
      )
    # `template` may hold arrays or jax.ShapeDtypeStruct leaves (jax.eval_shape).
    abstract = jax.tree.map(
      lambda x: np.zeros(np.shape(x), np.dtype(x.dtype)), template
    )
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # pylint: disable=broad-except
      # Damaged files, missing items, or a tree unlike this code's train state
      # (orbax's multi-line errors: keep the first line).
      raise UnreadableCheckpoint(
        f'checkpoint {where} cannot be read into the train state this code builds '
        f'({type(e).__name__}: {_first_line(e)[:300]})'
      ) from e
    data_state = dict(restored.data)
    saved_digest = data_state.pop(DIGEST_KEY, None)
    if saved_digest is not None and saved_digest != tree_digest(restored.state):
      raise UnreadableCheckpoint(
        f'checkpoint {where} is damaged (its arrays do not match '
        'the digest written with them)'
      )
    return restored.state, data_state

  def wait(self):
    """Blocks until pending writes are finished; raises CheckpointError if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._last_submitted, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # A failed write is what wait() reported.
