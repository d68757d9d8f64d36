"""Several processes (hosts) in one run: jax.distributed set-up from flags or environment.

  # Each process of a 2-host GPU run (or CPU, as the tests do):
  python -m layermatch_jax.main ... --coordinator_address=HOST0:1234 \
      --num_processes=2 --process_id=I

The same three values can come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
and JAX_PROCESS_ID. On a Cloud TPU pod slice or under SLURM, `--distributed`
calls jax.distributed.initialize() without arguments and it finds its peers
itself (it is also called when TPU_WORKER_HOSTNAMES lists several hosts). Must
run before any JAX computation.
"""

import os
from typing import Optional

import jax

ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


class DistributedError(ValueError):
  """Inconsistent multi-process settings."""


def _is_multihost_tpu() -> bool:
  # TPU VMs of a multi-host slice list their peers; a single host lists one.
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


def initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  auto: bool = False,
) -> bool:
  """Starts jax.distributed when asked for; returns whether it did.

  Flags win over the environment. `auto` calls jax.distributed.initialize()
  without arguments, for clusters it can read its peers from (Cloud TPU pods,
  SLURM). A single process needs no call at all.
  """
  env = [os.environ.get(k) for k in ENV]
  coordinator_address = coordinator_address or env[0]
  try:
    num_processes = (
      num_processes
      if num_processes is not None
      else (int(env[1]) if env[1] else None)
    )
    process_id = (
      process_id
      if process_id is not None
      else (int(env[2]) if env[2] else None)
    )
  except ValueError as e:
    raise DistributedError(
      f'{ENV[1]}={env[1]!r} / {ENV[2]}={env[2]!r}: give integers'
    ) from e
  given = [
    coordinator_address is not None,
    num_processes is not None,
    process_id is not None,
  ]
  if any(given) and not all(given):
    raise DistributedError(
      'multi-process runs need all of --coordinator_address, --num_processes and '
      f'--process_id (or {", ".join(ENV)}); got coordinator_address={coordinator_address!r}, '
      f'num_processes={num_processes!r}, process_id={process_id!r}'
    )
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(
        f'--process_id={process_id} is not in [0, --num_processes='
        f'{num_processes})'
      )
    if num_processes == 1:
      return False
    # CPU collectives across processes go through gloo (GPU and TPU have their own).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
    )
    return True
  if auto or _is_multihost_tpu():
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise DistributedError(
        f'--distributed: jax.distributed.initialize() found no cluster to join '
        f'({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); on '
        'other machines give --coordinator_address, --num_processes and --process_id'
      ) from e
    return True
  return False


def barrier(name: str, timeout_s: int = 1800):
  """Waits until every process gets here (the coordination service, not a collective).

  CPU collectives (gloo) give up when processes reach their first collective
  more than 30 s apart, e.g. when one compiles more slowly on a loaded machine;
  meeting here first lets all start compiling the step together.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  client = jax_distributed.global_state.client
  if client is not None:
    client.wait_at_barrier(name, timeout_s * 1000)
