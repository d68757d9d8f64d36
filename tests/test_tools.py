"""tools/evaluate.py and tools/plot.py on one tiny real workdir."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from layermatch_jax import metrics as metrics_lib
from layermatch_jax import saved_run
from layermatch_jax import train
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _tool(name, *args):
  """Runs tools/<name>.py from the repo root with this process's env (XLA_FLAGS)."""
  return subprocess.run([sys.executable, os.path.join('tools', f'{name}.py'), *args],
                        cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                        timeout=300)


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == PNG_MAGIC


def _listing(root):
  return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)


def _assert_error(proc):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), proc.stderr
  return lines[0]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tools') / 'run')
  config = helpers.tiny_config('layermatch', **{
      'data.name': 'digits', 'data.num_labels': 50, 'data.image_size': 8,
      'batch_size': 16, 'uratio': 2, 'num_train_steps': 40, 'eval_every_steps': 20,
      'checkpoint_every_steps': 20, 'log_every_steps': 10, 'eval_batch_size': 64,
      # One compiled train step, not a second with per-term gradient norms.
      'grad_norms_by_term': False, 'probe_every_steps': 20})
  train.train_and_evaluate(config, path)
  return path


def test_evaluate_latest_matches_loop(workdir):
  proc = _tool('evaluate', f'--workdir={workdir}')
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)  # stdout is exactly one JSON object.
  last_eval = metrics_lib.read_metrics(workdir, 'eval')[-1]
  assert result['step'] == last_eval['step'] == 40
  assert result['top1'] == pytest.approx(last_eval['top1'], abs=1e-6)
  assert result['count'] == 360  # The digits test set.
  per_class = result['per_class_accuracy']
  assert sorted(per_class) == [str(k) for k in range(10)]
  # Per-class accuracy weighted by each class's test count is the top1.
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  counts = np.bincount(sklearn.datasets.load_digits().target[1437:], minlength=10)
  weighted = sum(per_class[str(k)] * counts[k] for k in range(10)) / counts.sum()
  assert weighted == pytest.approx(result['top1'], abs=1e-6)
  png = result['confusion_matrix_png']
  assert png == os.path.join(workdir, 'confusion_step40.png')
  assert _is_png(png)


def test_evaluate_earlier_step_in_process(workdir, tmp_path):
  from tools import evaluate  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'cm20.png')
  result = evaluate.evaluate(workdir, step=20, out=out)
  first_eval = metrics_lib.read_metrics(workdir, 'eval')[0]
  assert result['step'] == first_eval['step'] == 20
  assert result['top1'] == pytest.approx(first_eval['top1'], abs=1e-6)
  assert result['loss'] == pytest.approx(first_eval['loss'], rel=1e-4)
  assert result['confusion_matrix_png'] == out and _is_png(out)


def test_evaluate_unknown_step(workdir):
  before = _listing(workdir)
  line = _assert_error(_tool('evaluate', f'--workdir={workdir}', '--step=999'))
  assert '999' in line and '20, 40' in line
  assert _listing(workdir) == before  # Nothing written.


def test_evaluate_bad_workdirs(tmp_path):
  _assert_error(_tool('evaluate', f'--workdir={tmp_path / "missing"}'))
  assert not (tmp_path / 'missing').exists()
  line = _assert_error(_tool('evaluate', f'--workdir={tmp_path}'))
  assert 'config.json' in line
  (tmp_path / 'config.json').write_text('{}')
  line = _assert_error(_tool('evaluate', f'--workdir={tmp_path}'))
  assert 'checkpoint' in line
  assert _listing(tmp_path) == [str(tmp_path / 'config.json')]


def test_evaluate_fills_keys_newer_than_the_run(tmp_path):
  old = helpers.tiny_config().to_dict()
  del old['augment']['flip'], old['seed']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  notes = []
  config = saved_run.load_config(str(tmp_path), notes)
  assert config.augment.flip == default.get_config().augment.flip
  assert 'augment.flip' in notes[0] and 'seed' in notes[0]
  assert config.seed == 0 and config.model.name == 'wrn10_1'


def test_plot(workdir, tmp_path):
  proc = _tool('plot', workdir)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == os.path.join(workdir, 'curves.png')
  assert _is_png(proc.stdout.strip())
  out = str(tmp_path / 'two.png')
  proc = _tool('plot', workdir, workdir, '--labels=a,b', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == out and _is_png(out)


def test_plot_bad_input(workdir, tmp_path):
  line = _assert_error(_tool('plot', str(tmp_path / 'missing')))
  assert 'missing' in line
  line = _assert_error(_tool('plot', str(tmp_path)))
  assert 'metrics.jsonl' in line
  _assert_error(_tool('plot', workdir, '--labels=a,b'))


def _fake_run(runs, name, final, evals, steps=20):
  """A finished run's files as learning_benchmark reads them."""
  os.makedirs(os.path.join(runs, name))
  with open(os.path.join(runs, name, 'summary.json'), 'w') as f:
    json.dump(dict(final_top1=final, best_top1=max(evals), steps=steps, wall_s=60.0), f)
  with open(os.path.join(runs, name, 'metrics.jsonl'), 'w') as f:
    for i, top1 in enumerate(evals):
      f.write(json.dumps(dict(step=10 * (i + 1), split='eval', top1=top1)) + '\n')


def test_learning_benchmark_tabulates_finished_runs(tmp_path):
  runs = tmp_path / 'out' / 'runs'
  _fake_run(runs, 'supervised-250-s0', 0.30, [0.2, 0.30])
  _fake_run(runs, 'supervised-250-s1', 0.34, [0.2, 0.34])
  _fake_run(runs, 'lm_flexmatch-250-s0', 0.50, [0.4, 0.50])
  _fake_run(runs, 'fixmatch-250-s1', 0.31, [0.2, 0.31])
  _fake_run(runs, 'fixmatch-40-s0', 0.9, [0.9])  # No supervised run at 40 labels.
  os.makedirs(runs / 'fixmatch-250-s0')  # Unfinished: no summary, left out.
  os.makedirs(runs / 'fixmatch-250-s0' / 'checkpoints')
  proc = _tool('learning_benchmark', f'--data={tmp_path}', f'--out={tmp_path / "out"}',
               '--report_only')
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / 'out' / 'results.json') as f:
    rows = {(r['algorithm'], r['num_labels']): r for r in json.load(f)['rows']}
  assert set(rows) == {('supervised', 250), ('lm+flexmatch', 250), ('fixmatch', 250),
                       ('fixmatch', 40)}
  assert rows['supervised', 250]['mean'] == pytest.approx(0.32)
  assert rows['supervised', 250]['std'] == pytest.approx(np.std([0.30, 0.34], ddof=1))
  # Gains over supervised pair seeds: fixmatch s1 vs supervised s1 only.
  assert rows['fixmatch', 250]['vs_supervised']['diffs'] == pytest.approx([0.31 - 0.34])
  assert rows['lm+flexmatch', 250]['vs_supervised']['diffs'] == pytest.approx([0.50 - 0.30])
  assert rows['fixmatch', 40]['vs_supervised'] is None
  table = (tmp_path / 'out' / 'results.md').read_text()
  assert '| supervised | 250 | 0.3200 +- 0.0283 | 0.3000, 0.3400 |  | 1.0 min |' in table
  assert '| fixmatch | 250 | 0.3100 +- 0.0000 | 0.3100 | -0.0300 +- 0.0000 (ahead in 0/1) |' in table
  assert '| lm+flexmatch | 250 | 0.5000 +- 0.0000 | 0.5000 | +0.2000 +- 0.0000 (ahead in 1/1) |' in table
  assert '| fixmatch | 40 | 0.9000 +- 0.0000 | 0.9000 |  | 1.0 min |' in table
  assert _is_png(tmp_path / 'out' / 'accuracy.png')


def test_learning_benchmark_bad_input(tmp_path):
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path}', '--out=x',
                             '--algorithms=fixmatch,mixmatch', '--dry_run'))
  assert "'mixmatch' is not one of supervised, fixmatch, layermatch" in line
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path / "none.tar.gz"}',
                             '--out=x'))
  assert 'is neither a folder nor a .tar.gz archive' in line
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path}', '--out=x'))
  assert 'has no train/ folder' in line


def test_learning_benchmark_refuses_to_mix_step_budgets(tmp_path):
  runs = tmp_path / 'out' / 'runs'
  _fake_run(runs, 'supervised-250-s0', 0.30, [0.30], steps=20)
  for sub in ('train', 'test'):
    os.makedirs(tmp_path / 'data' / sub)
  # A finished run of 20 steps is not reused for a 30-step budget (nothing is run).
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path / "data"}',
                             f'--out={tmp_path / "out"}', '--algorithms=supervised',
                             '--num_labels=250', '--seeds=0', '--steps=30'))
  assert 'supervised-250-s0 is a finished run of 20 steps, not of 30' in line, line
  _fake_run(runs, 'fixmatch-250-s0', 0.35, [0.35], steps=30)
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path / "data"}',
                             f'--out={tmp_path / "out"}', '--report_only'))
  assert 'different step budgets (20, 30)' in line, line
  # Without --steps the budget's config decides (configs/cifar10_cpu.py: 1500).
  line = _assert_error(_tool('learning_benchmark', f'--data={tmp_path / "data"}',
                             f'--out={tmp_path / "out"}', '--algorithms=supervised',
                             '--num_labels=250', '--seeds=0'))
  assert 'supervised-250-s0 is a finished run of 20 steps, not of 1500' in line, line
  assert not os.path.exists(tmp_path / 'out' / 'results.md')


# --- tools/probe.py


def test_probe_latest_is_deterministic_and_bounds_the_head(workdir, tmp_path):
  out = str(tmp_path / 'probe.json')
  first = _tool('probe', f'--workdir={workdir}', f'--json={out}')
  assert first.returncode == 0, first.stderr
  lines = first.stdout.strip().splitlines()
  assert len(lines) == 1
  result = json.loads(lines[0])
  with open(out) as f:
    assert f.read().strip() == lines[0]
  # The head is scored exactly as the loop's evaluation scores it.
  last_eval = metrics_lib.read_metrics(workdir, 'eval')[-1]
  assert result['step'] == 40 and result['algorithm'] == 'layermatch'
  assert result['head_top1'] == pytest.approx(last_eval['top1'], abs=1e-6)
  assert (result['num_train'], result['num_test'], result['num_labeled']) == (1437, 360, 50)
  assert result['feature_dim'] == 64 and result['knn_k'] == 20
  # A linear classifier fit on every training label can do at least what the head does.
  assert result['probe_top1'] >= result['head_top1'] - 0.02, result
  assert result['head_probe_gap'] == pytest.approx(result['probe_top1'] - result['head_top1'])
  assert result['head_labeled_probe_gap'] == pytest.approx(
      result['probe_labeled_top1'] - result['head_top1'])
  # Every class has labeled images, so Avg-Clustering has a centre for each.
  assert result['num_centres'] == 10 and 0.0 <= result['centre_top1'] <= 1.0
  for key in ('probe_top1', 'probe_labeled_top1', 'knn_top1', 'head_train_top1'):
    assert 0.1 < result[key] <= 1.0, (key, result)
  # The head on the 50 labeled vs the 1387 other train images (its pseudo-labels):
  # together they are its accuracy on the whole train pool.
  assert result['num_unlabeled_train'] == 1387
  assert (50 * result['head_labeled_top1'] + 1387 * result['head_unlabeled_top1']) / 1437 == (
      pytest.approx(result['head_train_top1']))
  per_class = result['head_unlabeled_top1_per_class']
  assert len(per_class) == 10 and min(per_class) == result['head_unlabeled_worst_class_top1']
  assert 0.0 <= result['head_unlabeled_confident_share'] <= 1.0
  # Deterministic: the same numbers again, to the last digit.
  again = _tool('probe', f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr
  assert again.stdout == first.stdout


def test_probe_every_step_in_process(workdir):
  from tools import probe as probe_tool  # pylint: disable=g-import-not-at-top
  results = probe_tool.probe_workdir(workdir, 'all')
  assert [r['step'] for r in results] == [20, 40]
  evals = {r['step']: r['top1'] for r in metrics_lib.read_metrics(workdir, 'eval')}
  # The same probe ran during training (probe_every_steps=20): the saved
  # checkpoints give the numbers it logged.
  logged = {r['step']: r for r in metrics_lib.read_metrics(workdir, 'probe')}
  assert sorted(logged) == [20, 40]
  for r in results:
    assert r['head_top1'] == pytest.approx(evals[r['step']], abs=1e-6)
    for key in ('head_top1', 'probe_top1', 'probe_labeled_top1', 'knn_top1', 'centre_top1'):
      assert logged[r['step']][key] == pytest.approx(r[key], abs=1e-9), key
  # A subset of the training images for the probe and kNN; the labeled probe
  # (fit on the run's 50 labeled images, embedded again when the subset misses
  # some) is the same.
  sub = probe_tool.probe_workdir(workdir, 40, max_train=300)[0]
  assert sub['num_train'] == 300
  assert sub['probe_labeled_top1'] == results[1]['probe_labeled_top1']
  assert sub['head_top1'] == results[1]['head_top1']


def test_probe_bad_input_and_a_write_in_progress(workdir, tmp_path):
  # An orbax write in progress (the trainer's temporary directory) is left alone.
  pending = os.path.join(workdir, 'checkpoints', '60.orbax-checkpoint-tmp-1234')
  os.makedirs(pending)
  try:
    before = _listing(workdir)
    line = _assert_error(_tool('probe', f'--workdir={workdir}', '--step=999'))
    assert '999' in line and '20, 40' in line
    line = _assert_error(_tool('probe', f'--workdir={workdir}', '--step=last'))
    assert '--step=last is not valid' in line
    line = _assert_error(_tool('probe', f'--workdir={workdir}', '--k=0'))
    assert '--k=0' in line
    line = _assert_error(_tool('probe', f'--workdir={workdir}',
                               f'--json={tmp_path / "missing" / "p.json"}'))
    assert 'does not exist' in line
    _assert_error(_tool('probe', f'--workdir={tmp_path / "nothing"}'))
    proc = _tool('evaluate', f'--workdir={workdir}', f'--out={tmp_path / "cm.png"}')
    assert proc.returncode == 0, proc.stderr
    assert _listing(workdir) == before and os.path.isdir(pending)
  finally:
    os.rmdir(pending)
