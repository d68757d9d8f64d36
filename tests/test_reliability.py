"""Preemption and crash safety: SIGTERM, kill -9 at random points, damaged checkpoints,
non-finite losses, refused resumes. The trainer runs as the CLI, as a user runs it."""

import json
import os
import random
import re
import signal
import time

import jax
import numpy as np
import pytest

from layermatch_jax import checkpoint, preemption
from tests import cli


def _assert_states_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def _train_steps(workdir):
  with open(os.path.join(str(workdir), 'metrics.jsonl')) as f:
    return [r['step'] for r in map(json.loads, f) if r['split'] == 'train']


def _wait_for_step(proc, step, total):
  """Reads the trainer's stdout until it reports `step` (or exits)."""
  pattern = re.compile(r'step (\d+)/%d' % total)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    m = pattern.search(line)
    if m and int(m.group(1)) >= step:
      return int(m.group(1)), lines
  return None, lines


def test_sigterm_checkpoints_exits_and_resumes(tmp_path):
  workdir = tmp_path / 'run'
  args = (
    '--config.num_train_steps=40',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=1000',
    '--config.eval_every_steps=1000',
  )
  with open(tmp_path / 'stderr.txt', 'w') as err:
    proc = cli.start(workdir, *args, stderr=err)
    seen, _ = _wait_for_step(proc, 3, 40)
    assert seen is not None
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    proc.wait(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM
  m = re.search(
    r'Stopped by SIGTERM after step (\d+): checkpoint (\S+) written\. '
    r'Run the same command again to resume\.',
    out,
  )
  assert m, out[-2000:]
  stopped = int(m.group(1))
  assert seen <= stopped < 40
  assert m.group(2) == str(workdir / 'checkpoints' / str(stopped))
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(stopped)]
  assert 'SIGTERM: finishing this step' in (tmp_path / 'stderr.txt').read_text()

  again = cli.run(workdir, *args)
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'Resuming from {workdir}/checkpoints/{stopped}' in again.stdout
  first = int(re.search(r'step (\d+)/40', again.stdout).group(1))
  assert first == stopped + 1
  assert _train_steps(workdir) == list(range(1, 41))
  assert json.loads((workdir / 'summary.json').read_text())['steps'] == 40


@pytest.fixture
def sigint_handler():
  """Python's SIGINT handler for the test, whatever the launching shell set."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, previous)


def test_second_signal_stops_at_once(monkeypatch, sigint_handler):
  exits = []
  monkeypatch.setattr(os, '_exit', exits.append)
  with preemption.StopRequest() as stop:
    assert not stop.requested(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested(1) and stop.name == 'SIGINT' and exits == []
    os.kill(os.getpid(), signal.SIGINT)
    assert exits == [128 + signal.SIGINT]
  # The handlers are the previous ones again.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_signal_stays_ignored(sigint_handler):
  signal.signal(
    signal.SIGINT, signal.SIG_IGN
  )  # As in a shell's background job.
  with preemption.StopRequest() as stop:
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGINT)
    assert not stop.requested(1)
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_kill_9_at_random_points_then_resume_is_bit_exact(tmp_path):
  total = 24
  args = (
    f'--config.num_train_steps={total}',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=12',
  )
  reference = cli.run(tmp_path / 'reference', *args)
  assert reference.returncode == 0, reference.stderr[-2000:]

  workdir = tmp_path / 'killed'
  rng = random.Random(20261129)
  kills = []
  for _ in range(3):  # Three kills: each start costs a process and a compile.
    proc = cli.start(workdir, *args)
    target = rng.randint(1, total - 2)
    seen, lines = _wait_for_step(proc, target, total)
    # Somewhere inside the next step(s): mid-step, mid-log, or mid-checkpoint write.
    time.sleep(rng.uniform(0.0, 0.15))
    proc.kill()
    proc.wait(timeout=60)
    kills.append((target, seen))
    if seen is None:  # Already past the target when restarted: it finished.
      break
  final = cli.run(workdir, *args)
  assert final.returncode == 0, (kills, final.stderr[-2000:])
  assert not os.path.exists(workdir / 'checkpoints.unreadable'), kills

  killed_state, killed_data, step = cli.saved_state(workdir)
  reference_state, reference_data, _ = cli.saved_state(tmp_path / 'reference')
  assert step == total
  _assert_states_equal(killed_state, reference_state)
  assert killed_data == reference_data or (
    killed_data['iterator'] == reference_data['iterator']
  )
  # The log reads as one run: every step once, in order.
  assert _train_steps(workdir) == list(range(1, total + 1)), kills
  assert len([k for k in kills if k[1] is not None]) >= 2, kills


def _damage(path, how):
  data_files = [
    os.path.join(root, f)
    for root, _, files in os.walk(path)
    for f in files
    if os.sep + 'd' + os.sep in os.path.join(root, f)
  ]
  biggest = max(data_files, key=os.path.getsize)
  if how == 'truncate':
    with open(biggest, 'r+b') as f:
      f.truncate(os.path.getsize(biggest) // 3)
  else:  # Flip bytes in place: orbax alone reads this back without an error.
    raw = bytearray(open(biggest, 'rb').read())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(
      b ^ 0xFF for b in raw[middle : middle + 64]
    )
    with open(biggest, 'wb') as f:
      f.write(raw)


@pytest.mark.parametrize('how', ['truncate', 'flip'])
def test_damaged_newest_checkpoint_is_set_aside_and_previous_used(
  tmp_path, how
):
  workdir = tmp_path / 'run'
  args = (
    '--config.log_every_steps=2',
    '--config.checkpoint_every_steps=4',
    '--config.eval_every_steps=100',
  )
  first = cli.run(workdir, '--config.num_train_steps=8', *args)
  assert first.returncode == 0, first.stderr[-2000:]
  _damage(workdir / 'checkpoints' / '8', how)

  again = cli.run(workdir, '--config.num_train_steps=10', *args)
  assert again.returncode == 0, again.stderr[-2000:]
  warning = [
    line for line in again.stderr.splitlines() if line.startswith('warning: ')
  ]
  assert (
    len(warning) == 1 and f'checkpoint {workdir}/checkpoints/8' in warning[0]
  ), again.stderr
  assert (
    ('damaged' in warning[0])
    if how == 'flip'
    else ('cannot be read' in warning[0])
  )
  assert f'Resuming from {workdir}/checkpoints/4' in again.stdout
  assert os.path.isdir(workdir / 'checkpoints.unreadable' / '8')
  assert sorted(map(int, os.listdir(workdir / 'checkpoints'))) == [4, 8, 10]


def test_all_checkpoints_unreadable_is_an_error_and_moves_nothing(tmp_path):
  workdir = tmp_path / 'run'
  args = (
    '--config.log_every_steps=2',
    '--config.checkpoint_every_steps=4',
    '--config.eval_every_steps=100',
    '--config.num_train_steps=4',
  )
  assert cli.run(workdir, *args).returncode == 0
  _damage(workdir / 'checkpoints' / '4', 'truncate')
  again = cli.run(workdir, *args)
  assert again.returncode == 2
  line = cli.error_line(again)
  assert re.match(
    r'error: checkpoint \S+/checkpoints/4 cannot be read', line
  ), line
  assert 'no older step can be read either' in line
  assert os.listdir(workdir / 'checkpoints') == ['4']
  assert not os.path.exists(workdir / 'checkpoints.unreadable')


def test_non_finite_loss_stops_without_a_poisoned_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  proc = cli.run(
    workdir,
    '--config.num_train_steps=20',
    '--config.log_every_steps=5',
    '--config.checkpoint_every_steps=1',
    '--config.eval_every_steps=100',
    '--config.optim.learning_rate=1e30',
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = cli.error_line(proc)
  m = re.match(
    r'error: (loss_sup|loss_unsup|loss_cluster|loss|grad_norm/\w+) is '
    r'(nan|inf|-inf) at step (\d+); stopped without writing a checkpoint',
    line,
  )
  assert m, line
  bad_step = int(m.group(3))
  steps = sorted(map(int, os.listdir(workdir / 'checkpoints')))
  assert all(s < bad_step for s in steps), (steps, bad_step)
  if steps:  # What was written before is whole and finite.
    state, _, _ = cli.saved_state(workdir)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_changed_batch_size_on_resume_is_refused(tmp_path):
  workdir = tmp_path / 'run'
  args = (
    '--config.num_train_steps=2',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=100',
    '--config.log_every_steps=1',
  )
  assert cli.run(workdir, *args).returncode == 0
  before = sorted(os.listdir(workdir / 'checkpoints'))
  again = cli.run(
    workdir, *args[1:], '--config.num_train_steps=4', '--config.batch_size=16'
  )
  assert again.returncode == 2
  assert "'batch_size': (8, 16)" in cli.error_line(again), cli.error_line(again)
  assert sorted(os.listdir(workdir / 'checkpoints')) == before


def test_digest_catches_damage_orbax_reads_silently(tmp_path):
  state = {'w': np.arange(4096, dtype=np.float32), 'step': np.int32(3)}
  ckpt = checkpoint.Checkpointer(
    str(tmp_path / 'checkpoints'), async_save=False
  )
  ckpt.save(3, state, {'iterator': {'next_index': 3}}, {'model': 'x'})
  ckpt.close()
  restored, data_state = checkpoint.Checkpointer(
    str(tmp_path / 'checkpoints')
  ).restore(state, {'model': 'x'})
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert data_state == {'iterator': {'next_index': 3}}
  _damage(tmp_path / 'checkpoints' / '3', 'flip')
  with pytest.raises(checkpoint.UnreadableCheckpoint):
    checkpoint.Checkpointer(str(tmp_path / 'checkpoints')).restore(
      state, {'model': 'x'}
    )
