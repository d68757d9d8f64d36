"""Running `python -m layermatch_jax.main` from tests: tiny digits settings, 2 devices."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/demo.py (digits) shrunk: 8x8 images, 8 labeled + 16 unlabeled a step.
TINY = (
  '--config=configs/demo.py',
  '--config.data.image_size=8',
  '--config.batch_size=8',
  '--config.uratio=2',
  '--config.eval_batch_size=120',
  '--config.grad_norms_by_term=False',
)


def env(devices: int = 2, cache: bool = True, **extra) -> dict:
  out = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
    '--xla_cpu_collective_call_terminate_timeout_seconds=900',
    JAX_PLATFORMS='cpu',
    PYTHONUNBUFFERED='1',
  )
  if not cache:
    out.pop('JAX_COMPILATION_CACHE_DIR', None)
  out.update(extra)
  return out


def command(workdir, *args, tiny: bool = True) -> list:
  return [
    sys.executable,
    '-m',
    'layermatch_jax.main',
    *(TINY if tiny else ()),
    f'--workdir={workdir}',
    *args,
  ]


def run(
  workdir,
  *args,
  tiny: bool = True,
  timeout: int = 600,
  preexec_fn=None,
  prefix=(),
  **env_extra,
) -> subprocess.CompletedProcess:
  return subprocess.run(
    [*prefix, *command(workdir, *args, tiny=tiny)],
    cwd=ROOT,
    env=env(**env_extra),
    capture_output=True,
    text=True,
    timeout=timeout,
    preexec_fn=preexec_fn,
  )


def start(workdir, *args, stderr=None, **env_extra) -> subprocess.Popen:
  """A running trainer whose stdout is read line by line."""
  return subprocess.Popen(
    command(workdir, *args),
    cwd=ROOT,
    env=env(**env_extra),
    stdout=subprocess.PIPE,
    stderr=stderr or subprocess.DEVNULL,
    text=True,
  )


def error_line(proc: subprocess.CompletedProcess) -> str:
  """The last stderr line, which the contract says is the one `error: ...`."""
  lines = proc.stderr.strip().splitlines()
  return lines[-1] if lines else ''


def saved_state(workdir, step=None):
  """(state, data_state, step) of a checkpoint as nested dicts of numpy arrays
  (read without a template, so without building the model)."""
  manager = ocp.CheckpointManager(os.path.join(str(workdir), 'checkpoints'))
  step = manager.latest_step() if step is None else step
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()
    ),
  )
  manager.close()
  return (
    jax.tree.map(np.asarray, dict(restored.state)),
    dict(restored.data),
    step,
  )
