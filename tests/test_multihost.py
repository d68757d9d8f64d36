"""Two processes (gloo collectives, jax.distributed on localhost): 2 x 4 CPU
devices train in lockstep and match one process with 8 devices; 2 x 2 devices
stop together on SIGTERM and resume to where an uninterrupted run ends."""

import json
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np

from tests import cli

ARGS = (
  '--config.num_train_steps=6',
  '--config.checkpoint_every_steps=3',
  '--config.eval_every_steps=3',
  '--config.log_every_steps=1',
  '--config.algorithm=layermatch',
  '--config.pseudo_label.threshold=0.3',
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _records(workdir):
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _why(stderr: str) -> str:
  """The lines of a crashed process's stderr that say why (its tail is a module list)."""
  keys = (
    'Error',
    'error',
    'Fatal',
    'Check failed',
    'timed out',
    'Timeout',
    'abort',
  )
  lines = [line for line in stderr.splitlines() if any(k in line for k in keys)]
  return '\n'.join(lines[-30:])[-3000:] or stderr[-3000:]


def _start_two(workdir, tmp_path, tag, *args, devices=2):
  """Two trainer processes (`devices` each) on localhost.

  Output goes to files: a process blocked on a full pipe that is not being read
  would hold the other one in a collective.
  """
  address = f'localhost:{_free_port()}'
  procs, logs = [], []
  for i in range(2):
    out, err = tmp_path / f'{tag}_stdout{i}', tmp_path / f'{tag}_stderr{i}'
    logs.append((out, err))
    with open(out, 'w') as out_file, open(err, 'w') as err_file:
      procs.append(
        subprocess.Popen(
          cli.command(
            workdir,
            *args,
            f'--coordinator_address={address}',
            '--num_processes=2',
            f'--process_id={i}',
          ),
          cwd=cli.ROOT,
          env=cli.env(devices=devices),
          stdout=out_file,
          stderr=err_file,
        )
      )
  return procs, logs


def _wait_all(procs, timeout=600):
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()


def test_two_processes_match_one_process_with_all_devices(tmp_path):
  single = cli.run(tmp_path / 'single', *ARGS, devices=8)
  assert single.returncode == 0, single.stderr[-2000:]

  workdir = tmp_path / 'multi'
  procs, logs = _start_two(workdir, tmp_path, 'multi', *ARGS, devices=4)
  _wait_all(procs)
  outs = [(out.read_text(), err.read_text()) for out, err in logs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, _why(err)

  # Only process 0 reports and writes the logs and summary.
  assert 'Done: final top1' in outs[0][0]
  # (gloo itself prints connection lines to stdout, from several threads at once.)
  assert not any(
    word in outs[1][0] for word in ('step ', 'eval', 'Done', 'Resuming')
  )
  assert json.loads((workdir / 'summary.json').read_text())['steps'] == 6

  # Lockstep with the 8-device run: the same losses, pseudo-label statistics
  # and evaluations at every step (global batch statistics, all 360 test images).
  multi, reference = _records(workdir), _records(tmp_path / 'single')
  assert [(r['split'], r['step']) for r in multi] == [
    (r['split'], r['step']) for r in reference
  ]
  for a, b in zip(multi, reference):
    for key in (
      'loss',
      'loss_sup',
      'loss_unsup',
      'loss_cluster',
      'mask_ratio',
      'top1',
    ):
      if key in b and b[key] is not None:
        np.testing.assert_allclose(
          a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=f'{a} vs {b}'
        )
  assert 'top1' in multi[-1] and any(r.get('mask_ratio') for r in multi)

  # The collectively written checkpoint equals the single-process one.
  state, data_state, step = cli.saved_state(workdir)
  ref_state, ref_data, _ = cli.saved_state(tmp_path / 'single')
  assert step == 6 and data_state['iterator'] == ref_data['iterator']
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_sigterm_to_both_processes_stops_them_after_one_step_and_resumes(
  tmp_path,
):
  """Both processes get SIGTERM (a TPU slice's maintenance event): they agree
  on one step, checkpoint after it, exit 143, and the resumed run ends where an
  uninterrupted one does."""
  total = 30
  args = (
    f'--config.num_train_steps={total}',
    '--config.checkpoint_every_steps=1000',
    '--config.eval_every_steps=1000',
    '--config.log_every_steps=1',
    '--config.algorithm=layermatch',
    '--config.pseudo_label.threshold=0.3',
  )
  reference = cli.run(tmp_path / 'reference', *args, devices=4)
  assert reference.returncode == 0, reference.stderr[-2000:]

  workdir = tmp_path / 'multi'
  procs, logs = _start_two(workdir, tmp_path, 'first', *args)
  deadline = time.time() + 600
  while time.time() < deadline:  # Until process 0 has logged step 3.
    steps = re.findall(rf'step (\d+)/{total}', logs[0][0].read_text())
    if (
      steps and int(steps[-1]) >= 3 or any(p.poll() is not None for p in procs)
    ):
      break
    time.sleep(0.2)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  _wait_all(procs)
  outs = [(out.read_text(), err.read_text()) for out, err in logs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 128 + signal.SIGTERM, _why(err)
  m = re.search(r'Stopped by SIGTERM after step (\d+)', outs[0][0])
  assert m, outs[0][0][-2000:]
  stopped = int(m.group(1))
  assert 3 <= stopped < total
  # One checkpoint, written by both processes after the same step.
  assert os.listdir(workdir / 'checkpoints') == [str(stopped)]

  procs, logs = _start_two(workdir, tmp_path, 'again', *args)
  _wait_all(procs)
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, _why(err.read_text())
  assert f'checkpoints/{stopped}' in logs[0][0].read_text()  # Resumed there.
  train = [r['step'] for r in _records(workdir) if r['split'] == 'train']
  assert train == list(range(1, total + 1))

  state, data_state, step = cli.saved_state(workdir)
  ref_state, ref_data, _ = cli.saved_state(tmp_path / 'reference')
  assert step == total and data_state['iterator'] == ref_data['iterator']
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
