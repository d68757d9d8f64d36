"""Data parallelism over local devices: the axis name, pmap and host <-> device.

The training code maps over devices through `pmap`, `replicate`, `unreplicate`
and `shard` here. A move to `jax.jit` over a mesh would start in this file but
not end in it: the input pipeline's `[devices, per-device batch]` layout,
`evaluation`'s padded batches and `tools/benchmark.py` assume that layout too.
"""

from typing import Callable, Optional, Sequence

import jax
import numpy as np


# The name of the device axis that collectives (BatchNorm statistics, psum of
# the centres' sums, the loss means) reduce over.
AXIS = 'batch'


def _pmap_devices(devices):
  """pmap's `devices`: with several processes, None (all devices of all processes,
  each process feeding its local ones); a list of local devices there would give
  each process a separate computation, with collectives over its devices only."""
  return None if jax.process_count() > 1 else devices


def pmap(
  fn: Callable,
  devices: Optional[Sequence[jax.Device]] = None,
  donate_state: bool = True,
) -> Callable:
  """Maps fn(state, batch, ...) over devices; the state's buffers are donated.

  After a donating call the old state is invalid: only use the returned one.
  """
  return jax.pmap(
    fn,
    axis_name=AXIS,
    devices=_pmap_devices(devices),
    donate_argnums=(0,) if donate_state else (),
  )


def replicate(tree, devices: Optional[Sequence[jax.Device]] = None):
  """One copy per device, laid out exactly as pmap's outputs are.

  flax.jax_utils.replicate places arrays on a mesh of its own; pmap then sees
  an input sharding unlike its outputs' and compiles the step a second time.
  Passing the copies through a pmapped identity gives them pmap's layout.
  """
  devices = list(devices or jax.local_devices())
  stacked = jax.tree.map(
    lambda x: np.stack([np.asarray(x)] * len(devices)), tree
  )
  return jax.pmap(lambda x: x, axis_name=AXIS, devices=_pmap_devices(devices))(
    stacked
  )


def unreplicate(tree):
  """The first device's copy, fetched to the host as numpy arrays.

  Reads one shard only (flax's unreplicate returns a [1, ...] array when pmap
  runs on a subset of the devices).
  """

  def first(x):
    if isinstance(x, jax.Array):
      # A copy: on CPU np.asarray can alias the device buffer, which the next
      # donating step overwrites (a checkpoint written later would change).
      return np.array(x.addressable_shards[0].data, copy=True).reshape(
        x.shape[1:]
      )
    return np.asarray(x)[0]

  return jax.tree.map(first, tree)


def shard(tree, num_devices: int):
  """Reshapes host arrays [N, ...] to [num_devices, N / num_devices, ...]."""

  def reshape(x):
    x = np.asarray(x)
    if x.shape[0] % num_devices:
      raise ValueError(
        f'batch of {x.shape[0]} does not split over {num_devices} devices'
      )
    return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

  return jax.tree.map(reshape, tree)


def put_sharded(tree, devices: Optional[Sequence[jax.Device]] = None):
  """Host arrays [local devices, ...] onto the devices, as pmap lays out inputs.

  Row i goes to local device i. With several processes the arrays are the
  process's part of one global array over every process's devices, as pmap
  builds from host arrays itself; a local-only array there would be a second
  input layout (and a second compilation).
  """
  devices = list(devices or jax.local_devices())
  if jax.process_count() > 1:
    mesh_devices = jax.devices()
  else:
    mesh_devices = devices
  mesh = jax.sharding.Mesh(np.asarray(mesh_devices), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

  def put(x):
    x = np.asarray(x)
    if x.shape[0] != len(devices):
      raise ValueError(
        f'array of leading size {x.shape[0]} does not match {len(devices)} '
        'local devices'
      )
    global_shape = (len(mesh_devices), *x.shape[1:])
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return jax.tree.map(put, tree)
