"""The training loop and CLI end to end: logs, summary, exact resume, bad flags."""

import json
import os

import jax
import numpy as np
import pytest

from layermatch_jax import checkpoint, train
from layermatch_jax.learner import Learner
from tests import cli
from tests.helpers import tiny_config


def _config(**overrides):
  settings = {
    'data.name': 'digits',
    'data.num_labels': 50,
    'batch_size': 16,
    'uratio': 2,
    'num_train_steps': 12,
    'eval_every_steps': 6,
    'checkpoint_every_steps': 4,
    'log_every_steps': 3,
    'eval_batch_size': 64,
  }
  settings.update(overrides)
  return tiny_config('layermatch', **settings)


def _params(workdir, config):
  """The parameters and centres of the latest checkpoint in `workdir`."""
  learner = Learner(config, 10, (8, 8, 3))
  meta = checkpoint.state_meta(config, 10, (8, 8, 3))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  state, data_state = ckpt.restore(learner.init_host_state(), meta)
  ckpt.close()
  return state, data_state


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  config = _config()
  summary = train.train_and_evaluate(config, workdir)
  return workdir, config, summary


def test_workdir_layout_metrics_and_summary(full_run):
  workdir, config, summary = full_run
  assert jax.local_device_count() == 8  # the loop ran on 8 simulated devices
  assert sorted(summary) == [
    'best_top1',
    'final_top1',
    'median_last_top1',
    'num_evals',
    'steps',
    'wall_s',
  ]
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f) == summary
  assert summary['steps'] == 12 and summary['num_evals'] == 2
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['model']['name'] == 'wrn10_1'
  with open(os.path.join(workdir, 'splits', 'split.json')) as f:
    assert len(json.load(f)['labeled_indices']) == 50
  with open(os.path.join(workdir, 'data_summary.json')) as f:
    data_summary = json.load(f)
  assert data_summary['class_names'] == [str(d) for d in range(10)]
  assert [c['labeled'] for c in data_summary['classes']] == [5] * 10
  assert (data_summary['num_labeled'], data_summary['num_test']) == (50, 360)

  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train_lines = [r for r in records if r['split'] == 'train']
  eval_lines = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in train_lines] == [3, 6, 9, 12]
  assert [r['step'] for r in eval_lines] == [6, 12]
  for r in train_lines:
    for key in (
      'loss',
      'loss_sup',
      'loss_unsup',
      'loss_cluster',
      'mask_ratio',
      'pseudo_label_acc',
      'lr',
      'grad_norm/head/unsup',
      'grad_norm/backbone/sup',
    ):
      assert key in r, key
    assert r['grad_norm/head/unsup'] == 0.0  # LayerMatch: Grad-ReLU
  for r in eval_lines:
    assert 0.0 <= r['top1'] <= 1.0
  assert summary['final_top1'] == eval_lines[-1]['top1']
  assert summary['best_top1'] == max(r['top1'] for r in eval_lines)
  assert any(
    name.startswith('events.out.tfevents') for name in os.listdir(workdir)
  )
  # Checkpoints every 4 steps, the last 3 kept.
  assert sorted(
    int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
  ) == [4, 8, 12]


def test_resume_is_bit_exact(full_run, tmp_path):
  full_dir, config, _ = full_run
  workdir = str(tmp_path / 'interrupted')
  # Stopped after step 5 (as a preemption would, between checkpoints at 4 and 8)...
  train.train_and_evaluate(config, workdir, max_steps=5)
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  # ...then the same command again resumes from the step-5 checkpoint.
  summary = train.train_and_evaluate(config, workdir)
  assert summary['steps'] == 12

  resumed, resumed_data = _params(workdir, config)
  full, full_data = _params(full_dir, config)
  assert resumed_data['iterator'] == full_data['iterator']
  for a, b in zip(
    jax.tree.leaves(
      (
        resumed.params,
        resumed.ema_params,
        resumed.batch_stats,
        resumed.opt_state,
        resumed.cluster,
      )
    ),
    jax.tree.leaves(
      (
        full.params,
        full.ema_params,
        full.batch_stats,
        full.opt_state,
        full.cluster,
      )
    ),
  ):
    np.testing.assert_array_equal(a, b)
  # The logs read as one run: each step once.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [(r['split'], r['step']) for r in map(json.loads, f)]
  assert len(steps) == len(set(steps))
  with open(os.path.join(full_dir, 'metrics.jsonl')) as f:
    full_eval = [r['top1'] for r in map(json.loads, f) if r['split'] == 'eval']
  assert summary['final_top1'] == full_eval[-1]


def test_incompatible_checkpoint_is_refused(full_run):
  workdir, config, _ = full_run
  other = _config(**{'model.name': 'wrn16_1'})
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  with pytest.raises(
    checkpoint.CheckpointError, match="'model': \\('wrn10_1', 'wrn16_1'\\)"
  ):
    train.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before


def test_cli_trains_with_overrides(tmp_path):
  workdir = tmp_path / 'cli'
  proc = cli.run(
    workdir,
    '--config.num_train_steps=4',
    '--config.eval_every_steps=4',
    '--config.log_every_steps=2',
    '--config.checkpoint_every_steps=4',
    '--config.uratio=1',
    '--config.algorithm=fixmatch',
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(workdir / 'config.json') as f:
    saved = json.load(f)
  assert saved['num_train_steps'] == 4 and saved['algorithm'] == 'fixmatch'
  assert saved['data']['image_size'] == 8
  with open(workdir / 'summary.json') as f:
    assert json.load(f)['steps'] == 4
  assert 'step 4/4' in proc.stdout and 'eval step 4: top1' in proc.stdout


def test_non_finite_error_is_not_hidden_by_a_failed_checkpoint_write(
  tmp_path, monkeypatch
):
  """A pending write that fails while the run stops for a NaN is reported after the NaN."""
  original_close = checkpoint.Checkpointer.close

  def failing_close(self):
    original_close(self)
    raise checkpoint.CheckpointError('could not write checkpoint 3 (disk full)')

  monkeypatch.setattr(checkpoint.Checkpointer, 'close', failing_close)
  config = _config(
    **{
      'optim.learning_rate': 1e30,
      'log_every_steps': 2,
      'checkpoint_every_steps': 100,
      'eval_every_steps': 100,
    }
  )
  with pytest.raises(train.NonFiniteError) as error:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert (
    ' at step ' in message and 'stopped without writing a checkpoint' in message
  ), message
  assert message.endswith('; also, could not write checkpoint 3 (disk full)'), (
    message
  )
  assert '\n' not in message


def _uneven_folder(root, counts=(7, 23, 12)):
  """train/<class>/ of uneven sizes, no test/: the practitioner's folder."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for c, n in enumerate(counts):
    os.makedirs(os.path.join(root, 'train', f'class{c}'))
    for i in range(n):
      colour = np.zeros(3)
      colour[c] = 200
      pixels = np.clip(colour + rng.normal(0, 40, (10, 10, 3)), 0, 255).astype(
        np.uint8
      )
      Image.fromarray(pixels).save(
        os.path.join(root, 'train', f'class{c}', f'{i}.png')
      )
  return str(root)


def test_uneven_folder_all_labels_no_test_folder(tmp_path, capsys):
  folder = _uneven_folder(tmp_path / 'images')
  config = _config(
    **{
      'data.name': 'folder',
      'data.dir': folder,
      'data.num_labels': 'all',
      'batch_size': 8,
      'eval_batch_size': 8,
      'grad_norms_by_term': False,
    }
  )
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  # val_per_class=0.2 holds out 1, 5 and 2 images; the rest (6, 18, 10) are all labeled.
  with open(os.path.join(workdir, 'data_summary.json')) as f:
    data_summary = json.load(f)
  assert [
    (c['train'], c['labeled'], c['test']) for c in data_summary['classes']
  ] == [(6, 6, 1), (18, 18, 5), (10, 10, 2)]
  assert 'test: 8 labeled images held out from train/' in out
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['step'] for r in evals] == [6, 12] and summary['num_evals'] == 2
  assert 'eval step 12: top1 ' in out and '(8 images)' in out

  # data.val_per_class=0: every image trains, no evaluation, and the run says so.
  config.data.val_per_class = 0
  workdir = str(tmp_path / 'no_eval')
  summary = train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'evaluation: NONE' in out and 'Done, without evaluation' in out
  assert summary['num_evals'] == 0 and summary['final_top1'] is None
  with open(os.path.join(workdir, 'splits', 'split.json')) as f:
    assert json.load(f)['num_labels'] == 42
  assert sorted(
    int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints'))
  ) == [4, 8, 12]
