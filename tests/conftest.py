"""Test set-up: 8 simulated CPU devices, before JAX is imported anywhere.

A persistent compilation cache (also inherited by the CLI subprocesses) lets
tests that build the same step, e.g. a run and its resumption, compile it once.
"""

import os
import shutil
import tempfile

import pytest  # Imports no JAX: the settings below still come first.

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Simulated devices meet in collectives; on a loaded 2-core machine one device's
# thread can be late by more than XLA's 40 s, which aborts the process.
SLOW_COLLECTIVES_OK = '--xla_cpu_collective_call_terminate_timeout_seconds=900'
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
if 'collective_call_terminate' not in os.environ['XLA_FLAGS']:
  os.environ['XLA_FLAGS'] += ' ' + SLOW_COLLECTIVES_OK
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR', os.path.join(_ROOT, '.jax_cache')
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


@pytest.fixture(autouse=True, scope='session')
def _private_tempdir(tmp_path_factory):
  """Stray temporary files go in a folder removed after the run.

  TFDS leaves an empty tmp*tfds directory per dataset builder it makes (about
  20 a run); CLI subprocesses inherit TMPDIR.
  """
  path = str(tmp_path_factory.mktemp('tempdir'))
  saved_env, saved_tempdir = os.environ.get('TMPDIR'), tempfile.tempdir
  os.environ['TMPDIR'], tempfile.tempdir = path, path
  yield
  tempfile.tempdir = saved_tempdir
  if saved_env is None:
    os.environ.pop('TMPDIR', None)
  else:
    os.environ['TMPDIR'] = saved_env
  shutil.rmtree(path, ignore_errors=True)
