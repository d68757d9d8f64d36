"""Train batches copied to the devices ahead of the step that uses them.

While step k runs, batch k + 1 (and up to `size` - 1 batches in all) is already
on its way to the devices, so the step never waits for a host -> device copy
(double buffering, as the Flax examples' `prefetch_to_device`).

A checkpoint stores the input position, and the batches in the buffer were
drawn but not trained on. `get_state()` therefore returns the position just
after the last batch handed out, not the wrapped iterator's own (which is
`size` batches further on): a resume then trains on exactly the batches an
uninterrupted run would have.
"""

import collections
from typing import Optional, Sequence

import jax

from layermatch_jax import parallel


class DevicePrefetch:
  """An iterator of sharded batches, `size` of them already on the devices.

  `iterator` yields host batches laid out [devices, per-device batch, ...] and
  has `get_state()` / `set_state()` (a grain DatasetIterator). `size` 0 passes
  the host batches through unchanged (pmap then copies them in the step).
  """

  def __init__(
    self,
    iterator,
    size: int,
    devices: Optional[Sequence[jax.Device]] = None,
  ):
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
      raise ValueError(f'prefetch size {size!r} is not valid: use an int >= 0')
    self._iterator = iterator
    self._size = size
    self._devices = list(devices or jax.local_devices())
    # (batch on the devices, the wrapped iterator's state just after it).
    self._buffer = collections.deque()
    self._state = iterator.get_state()

  def __iter__(self):
    return self

  def _fill(self):
    while len(self._buffer) < self._size:
      batch = next(self._iterator)
      state = self._iterator.get_state()
      self._buffer.append((parallel.put_sharded(batch, self._devices), state))

  def __next__(self):
    if not self._size:
      batch = next(self._iterator)
      self._state = self._iterator.get_state()
      return batch
    self._fill()
    batch, self._state = self._buffer.popleft()
    self._fill()  # The next batch's copy starts before this batch's step.
    return batch

  def get_state(self):
    """The input position after the last batch returned by `next`."""
    return self._state

  def set_state(self, state):
    """Continues after the batch `state` was taken after; drops the buffer."""
    self._buffer.clear()
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()
