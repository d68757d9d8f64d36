"""Stopping cleanly on SIGTERM/SIGINT: finish the step, checkpoint, exit.

Single process: the first SIGTERM or SIGINT sets a flag that the train loop reads
after every step; a second one exits at once (status 128 + signal number), which
is safe because checkpoints are finalised atomically (an unfinished one is never
read back).

Several processes: every process must stop after the same step, so SIGTERM is
left to JAX's preemption notifier (set up by jax.distributed.initialize) and the
processes agree on the step through `reached_preemption_sync_point`, the
mechanism Cloud TPU maintenance events go through; SIGINT keeps its default.
"""

import os
import signal
import sys
import threading
from typing import Optional

import jax

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """Context manager: while active, `requested(step)` says whether to stop after `step`."""

  def __init__(self):
    self.signum: Optional[int] = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      print(
        f'\n{signal.Signals(signum).name} again: stopping now, without a checkpoint',
        file=sys.stderr,
        flush=True,
      )
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum
    print(
      f'\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint '
      '(send it again to stop at once)',
      file=sys.stderr,
      flush=True,
    )

  def __enter__(self):
    # Handlers can only be set from the main thread (a notebook's cell is; a
    # worker thread is not: there the default behaviour stays).
    # Several processes: no handlers (a signal seen by one process only must not
    # make it leave the others waiting in a collective).
    # A signal ignored on entry stays ignored (a shell starts background jobs with
    # SIGINT ignored so that Ctrl-C does not reach them).
    if (
      threading.current_thread() is threading.main_thread()
      and not self._multiprocess
    ):
      for s in _SIGNALS:
        if signal.getsignal(s) is not signal.SIG_IGN:
          self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
    return False

  def requested(self, step: int) -> bool:
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  @property
  def exit_status(self) -> int:
    """What the command exits with after a clean stop: 128 + the signal number."""
    return 128 + int(self.signum or 0)
