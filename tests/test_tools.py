"""The tools (layermatch_jax/commands/, run as tools/NAME.py) on one tiny real
workdir, and what they share (layermatch_jax/cli_util.py)."""

import configparser
import importlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from configs import default
from configs import demo
from layermatch_jax import cli_util
from layermatch_jax import metrics as metrics_lib
from layermatch_jax import saved_run
from layermatch_jax import train
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _tool(name, *args, cwd=REPO):
  """Runs tools/<name>.py (from the repo root) with this process's env (XLA_FLAGS)."""
  return subprocess.run(
    [sys.executable, os.path.join(REPO, 'tools', f'{name}.py'), *args],
    cwd=cwd,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _is_png(path):
  with open(path, 'rb') as f:
    return f.read(8) == PNG_MAGIC


def _listing(root):
  return sorted(
    os.path.join(d, n) for d, _, names in os.walk(root) for n in names
  )


def _assert_error(proc):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), proc.stderr
  return lines[0]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tools') / 'run')
  config = helpers.tiny_config(
    'layermatch',
    **{
      'data.name': 'digits',
      'data.num_labels': 50,
      'data.image_size': 8,
      'batch_size': 16,
      'uratio': 2,
      'num_train_steps': 40,
      'eval_every_steps': 20,
      'checkpoint_every_steps': 20,
      'log_every_steps': 10,
      'eval_batch_size': 64,
      # One compiled train step, not a second with per-term gradient norms.
      'grad_norms_by_term': False,
      'probe_every_steps': 20,
    },
  )
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

  counts = np.bincount(
    sklearn.datasets.load_digits().target[1437:], minlength=10
  )
  weighted = (
    sum(per_class[str(k)] * counts[k] for k in range(10)) / counts.sum()
  )
  assert weighted == pytest.approx(result['top1'], abs=1e-6)
  png = result['confusion_matrix_png']
  assert png == os.path.join(workdir, 'confusion_step40.png')
  assert _is_png(png)


def test_evaluate_earlier_step_in_process(workdir, tmp_path):
  from layermatch_jax.commands import evaluate  # pylint: disable=g-import-not-at-top

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
  assert f'no --out given: wrote {workdir}/curves.png' in proc.stderr
  out = str(tmp_path / 'two.png')
  proc = _tool('plot', workdir, workdir, '--labels=a,b', f'--out={out}')
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == out and _is_png(out)
  assert 'no --out' not in proc.stderr
  # Several runs without --out: curves.png in the current directory, and said so.
  here = tmp_path / 'here'
  here.mkdir()
  proc = _tool('plot', workdir, workdir, '--labels=a,b', cwd=here)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == str(here / 'curves.png') and _is_png(
    here / 'curves.png'
  )
  assert (
    f'no --out given: wrote {here}/curves.png (default ./curves.png in the current '
    'directory' in proc.stderr
  ), proc.stderr
  assert sorted(os.listdir(here)) == ['curves.png']  # No temporary file left.


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
    json.dump(
      dict(final_top1=final, best_top1=max(evals), steps=steps, wall_s=60.0), f
    )
  with open(os.path.join(runs, name, 'metrics.jsonl'), 'w') as f:
    for i, top1 in enumerate(evals):
      f.write(
        json.dumps(dict(step=10 * (i + 1), split='eval', top1=top1)) + '\n'
      )


def test_learning_benchmark_tabulates_finished_runs(tmp_path):
  runs = tmp_path / 'out' / 'runs'
  _fake_run(runs, 'supervised-250-s0', 0.30, [0.2, 0.30])
  _fake_run(runs, 'supervised-250-s1', 0.34, [0.2, 0.34])
  _fake_run(runs, 'lm_flexmatch-250-s0', 0.50, [0.4, 0.50])
  _fake_run(runs, 'fixmatch-250-s1', 0.31, [0.2, 0.31])
  _fake_run(
    runs, 'fixmatch-40-s0', 0.9, [0.9]
  )  # No supervised run at 40 labels.
  os.makedirs(runs / 'fixmatch-250-s0')  # Unfinished: no summary, left out.
  os.makedirs(runs / 'fixmatch-250-s0' / 'checkpoints')
  proc = _tool(
    'learning_benchmark',
    f'--data={tmp_path}',
    f'--out={tmp_path / "out"}',
    '--report_only',
  )
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / 'out' / 'results.json') as f:
    rows = {(r['algorithm'], r['num_labels']): r for r in json.load(f)['rows']}
  assert set(rows) == {
    ('supervised', 250),
    ('lm+flexmatch', 250),
    ('fixmatch', 250),
    ('fixmatch', 40),
  }
  assert rows['supervised', 250]['mean'] == pytest.approx(0.32)
  assert rows['supervised', 250]['std'] == pytest.approx(
    np.std([0.30, 0.34], ddof=1)
  )
  # Gains over supervised pair seeds: fixmatch s1 vs supervised s1 only.
  assert rows['fixmatch', 250]['vs_supervised']['diffs'] == pytest.approx(
    [0.31 - 0.34]
  )
  assert rows['lm+flexmatch', 250]['vs_supervised']['diffs'] == pytest.approx(
    [0.50 - 0.30]
  )
  assert rows['fixmatch', 40]['vs_supervised'] is None
  table = (tmp_path / 'out' / 'results.md').read_text()
  assert (
    '| supervised | 250 | 0.3200 +- 0.0283 | 0.3000, 0.3400 |  | 1.0 min |'
    in table
  )
  assert (
    '| fixmatch | 250 | 0.3100 +- 0.0000 | 0.3100 | -0.0300 +- 0.0000 (ahead in 0/1) |'
    in table
  )
  assert (
    '| lm+flexmatch | 250 | 0.5000 +- 0.0000 | 0.5000 | +0.2000 +- 0.0000 (ahead in 1/1) |'
    in table
  )
  assert '| fixmatch | 40 | 0.9000 +- 0.0000 | 0.9000 |  | 1.0 min |' in table
  assert _is_png(tmp_path / 'out' / 'accuracy.png')


def test_learning_benchmark_bad_input(tmp_path):
  line = _assert_error(
    _tool(
      'learning_benchmark',
      f'--data={tmp_path}',
      '--out=x',
      '--algorithms=fixmatch,mixmatch',
      '--dry_run',
    )
  )
  assert "'mixmatch' is not one of supervised, fixmatch, layermatch" in line
  line = _assert_error(
    _tool('learning_benchmark', f'--data={tmp_path / "none.tar.gz"}', '--out=x')
  )
  assert 'is neither a folder nor a .tar.gz archive' in line
  line = _assert_error(
    _tool('learning_benchmark', f'--data={tmp_path}', '--out=x')
  )
  assert 'has no train/ folder' in line


def _archive(root):
  """ROOT/cifar.tar.gz holding train/<class>/ and test/<class>/ (one image each)."""
  for sub in ('train/cat', 'test/cat'):
    os.makedirs(root / 'src' / sub)
    (root / 'src' / sub / '0.png').write_bytes(PNG_MAGIC)
  path = root / 'cifar.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    for sub in ('train', 'test'):
      tar.add(root / 'src' / sub, sub)
  return path


def test_learning_benchmark_dry_run_unpacks_and_creates_nothing(tmp_path):
  archive = _archive(tmp_path)
  unpacked, out = tmp_path / 'unpacked', tmp_path / 'out'
  before = sorted(os.listdir(tmp_path))
  args = (
    f'--data={archive}',
    f'--unpack_dir={unpacked}',
    f'--out={out}',
    '--seeds=0',
    '--algorithms=supervised,fixmatch',
    '--num_labels=40',
    '--steps=5',
    '--dry_run',
  )
  proc = _tool('learning_benchmark', *args)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert (
    sorted(os.listdir(tmp_path)) == before
  )  # Neither unpacked nor OUT created.
  # The commands only: unpacking first, as the tool would, then one per run.
  assert lines[0] == f'mkdir -p {unpacked} && tar xf {archive} -C {unpacked}'
  assert len(lines) == 3, lines
  for line, name in zip(lines[1:], ('supervised-40-s0', 'fixmatch-40-s0')):
    assert ' -m layermatch_jax.main --config=configs/cifar10_cpu.py ' in line
    assert (
      f'--workdir={out}/runs/{name}' in line
      and f'--config.data.dir={unpacked}' in line
    )
  subprocess.run(lines[0], shell=True, check=True)
  assert sorted(os.listdir(unpacked)) == ['test', 'train']
  # Unpacked already: nothing more to unpack.
  proc = _tool('learning_benchmark', *args)
  assert proc.returncode == 0, proc.stderr
  assert [line for line in proc.stdout.splitlines() if 'tar' in line] == []
  assert not out.exists()


def test_learning_benchmark_report_only_on_a_fresh_clone(tmp_path):
  out = tmp_path / 'benchmarks' / 'cifar10_cpu'
  line = _assert_error(
    _tool(
      'learning_benchmark',
      f'--data={tmp_path / "cifar.tar.gz"}',
      f'--out={out}',
      '--report_only',
    )
  )
  assert f'no finished runs under {out}/runs' in line
  assert os.listdir(tmp_path) == []  # Nothing created.


def test_learning_benchmark_refuses_to_mix_step_budgets(tmp_path):
  runs = tmp_path / 'out' / 'runs'
  _fake_run(runs, 'supervised-250-s0', 0.30, [0.30], steps=20)
  for sub in ('train', 'test'):
    os.makedirs(tmp_path / 'data' / sub)
  # A finished run of 20 steps is not reused for a 30-step budget (nothing is run).
  line = _assert_error(
    _tool(
      'learning_benchmark',
      f'--data={tmp_path / "data"}',
      f'--out={tmp_path / "out"}',
      '--algorithms=supervised',
      '--num_labels=250',
      '--seeds=0',
      '--steps=30',
    )
  )
  assert 'supervised-250-s0 is a finished run of 20 steps, not of 30' in line, (
    line
  )
  _fake_run(runs, 'fixmatch-250-s0', 0.35, [0.35], steps=30)
  line = _assert_error(
    _tool(
      'learning_benchmark',
      f'--data={tmp_path / "data"}',
      f'--out={tmp_path / "out"}',
      '--report_only',
    )
  )
  assert 'different step budgets (20, 30)' in line, line
  # Without --steps the budget's config decides (configs/cifar10_cpu.py: 1500).
  line = _assert_error(
    _tool(
      'learning_benchmark',
      f'--data={tmp_path / "data"}',
      f'--out={tmp_path / "out"}',
      '--algorithms=supervised',
      '--num_labels=250',
      '--seeds=0',
    )
  )
  assert (
    'supervised-250-s0 is a finished run of 20 steps, not of 1500' in line
  ), line
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
  assert (result['num_train'], result['num_test'], result['num_labeled']) == (
    1437,
    360,
    50,
  )
  assert result['feature_dim'] == 64 and result['knn_k'] == 20
  # A linear classifier fit on every training label can do at least what the head does.
  assert result['probe_top1'] >= result['head_top1'] - 0.02, result
  assert result['head_probe_gap'] == pytest.approx(
    result['probe_top1'] - result['head_top1']
  )
  assert result['head_labeled_probe_gap'] == pytest.approx(
    result['probe_labeled_top1'] - result['head_top1']
  )
  # Every class has labeled images, so Avg-Clustering has a centre for each.
  assert result['num_centres'] == 10 and 0.0 <= result['centre_top1'] <= 1.0
  for key in (
    'probe_top1',
    'probe_labeled_top1',
    'knn_top1',
    'head_train_top1',
  ):
    assert 0.1 < result[key] <= 1.0, (key, result)
  # The head on the 50 labeled vs the 1387 other train images (its pseudo-labels):
  # together they are its accuracy on the whole train pool.
  assert result['num_unlabeled_train'] == 1387
  assert (
    50 * result['head_labeled_top1'] + 1387 * result['head_unlabeled_top1']
  ) / 1437 == (pytest.approx(result['head_train_top1']))
  per_class = result['head_unlabeled_top1_per_class']
  assert (
    len(per_class) == 10
    and min(per_class) == result['head_unlabeled_worst_class_top1']
  )
  # A share of the 1387 unlabeled train images.
  confident = result['head_unlabeled_confident_share'] * 1387
  assert confident == pytest.approx(round(confident), abs=1e-6), result
  # Deterministic: the same numbers again, to the last digit.
  again = _tool('probe', f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr
  assert again.stdout == first.stdout


def test_probe_every_step_in_process(workdir):
  from layermatch_jax.commands import probe as probe_tool  # pylint: disable=g-import-not-at-top

  results = probe_tool.probe_workdir(workdir, 'all')
  assert [r['step'] for r in results] == [20, 40]
  evals = {
    r['step']: r['top1'] for r in metrics_lib.read_metrics(workdir, 'eval')
  }
  # The same probe ran during training (probe_every_steps=20): the saved
  # checkpoints give the numbers it logged.
  logged = {r['step']: r for r in metrics_lib.read_metrics(workdir, 'probe')}
  assert sorted(logged) == [20, 40]
  for r in results:
    assert r['head_top1'] == pytest.approx(evals[r['step']], abs=1e-6)
    for key in (
      'head_top1',
      'probe_top1',
      'probe_labeled_top1',
      'knn_top1',
      'centre_top1',
    ):
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
    line = _assert_error(
      _tool(
        'probe',
        f'--workdir={workdir}',
        f'--json={tmp_path / "missing" / "p.json"}',
      )
    )
    assert 'does not exist' in line
    _assert_error(_tool('probe', f'--workdir={tmp_path / "nothing"}'))
    proc = _tool(
      'evaluate', f'--workdir={workdir}', f'--out={tmp_path / "cm.png"}'
    )
    assert proc.returncode == 0, proc.stderr
    assert _listing(workdir) == before and os.path.isdir(pending)
  finally:
    os.rmdir(pending)


# --- tools/show_augment.py


def test_show_augment_shows_what_the_demo_trains_on(tmp_path):
  from layermatch_jax.commands import show_augment  # pylint: disable=g-import-not-at-top

  out = f'--out={tmp_path / "a.png"}'
  # The digits are shown with the demo's settings: no flip (a mirrored digit is another).
  shown = show_augment.settings(show_augment.parse_args([out]))
  config = demo.get_config()
  assert shown == dict(
    flip=False,
    pad_fraction=config.augment.pad_fraction,
    num_ops=config.augment.num_ops,
    cutout_fraction=config.augment.cutout_fraction,
    size=config.data.image_size,
    config='configs/demo.py',
  )
  assert (
    show_augment.settings(show_augment.parse_args([out, '--flip']))['flip']
    is True
  )
  folder = show_augment.settings(
    show_augment.parse_args([out, '--image_dir=x', '--num_ops=1'])
  )
  assert (
    folder['flip'] is True and folder['num_ops'] == 1
  )  # configs/default.py, and the flag.
  assert folder['config'] == 'configs/default.py'
  # The setting reaches the views: without padding a weak view is the image or,
  # with flip, its mirror (these digits are not symmetric).
  images = show_augment.digits_images(4, 8)
  for flip in (False, True):
    grid = show_augment.make_views(
      images,
      6,
      0,
      flip=flip,
      pad_fraction=0.0,
      num_ops=0,
      cutout_fraction=0.0,
      strong=False,
    )
    assert grid.shape == (4, 7, 8, 8, 3)
    same = (grid[:, 1:] == grid[:, :1]).all(axis=(2, 3, 4))
    mirrored = (grid[:, 1:] == grid[:, :1, :, ::-1]).all(axis=(2, 3, 4)) & ~same
    assert (same | mirrored).all()
    assert mirrored.any() == flip


def test_show_augment_command(tmp_path):
  out = tmp_path / 'views.png'
  proc = _tool(
    'show_augment',
    f'--out={out}',
    '--num=2',
    '--views=1',
    '--size=8',
    '--scale=1',
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(
    f'wrote {out} (2 images x 3 columns; flip=False, '
  )
  assert '(configs/demo.py and flags)' in proc.stdout
  assert _is_png(out)
  line = _assert_error(
    _tool('show_augment', f'--out={tmp_path / "no" / "v.png"}')
  )
  assert 'does not exist' in line
  line = _assert_error(
    _tool('show_augment', f'--out={out}', f'--image_dir={tmp_path / "no"}')
  )
  assert 'no images' in line


# --- What the tools share: layermatch_jax/cli_util.py, the commands, the shims


def test_atomic_write(tmp_path):
  path = tmp_path / 'a.json'
  cli_util.write_json(str(path), {'b': 1, 'a': [2]}, indent=1, sort_keys=True)
  assert path.read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
  cli_util.write_text(str(path), 'one\r\ntwo\n')  # Exactly as given.
  assert path.read_bytes() == b'one\r\ntwo\n'
  # A failure inside the block leaves the old file, and no temporary one.
  with pytest.raises(RuntimeError):
    with cli_util.atomic_write(str(path), 'wb') as f:
      f.write(b'half')
      raise RuntimeError('interrupted')
  assert path.read_bytes() == b'one\r\ntwo\n' and os.listdir(tmp_path) == [
    'a.json'
  ]
  with pytest.raises(OSError):
    cli_util.write_text(str(tmp_path / 'missing' / 'x'), 'x')
  # A new file has the usual permissions (the umask's), not a private temporary's.
  cli_util.write_text(str(tmp_path / 'b.txt'), 'b')
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / 'b.txt').st_mode & 0o777 == 0o666 & ~umask


def test_one_line_errors(tmp_path, capsys):
  def main(argv):
    parser = cli_util.argument_parser('A tool.\n\nMore.')
    parser.add_argument('--n', type=int, required=True)
    args = parser.parse_args(argv)
    if args.n < 0:
      raise cli_util.ToolError(f'--n={args.n} is\nnegative')
    if args.n == 0:
      raise KeyError('not a bad input: a bug')
    return args.n

  assert cli_util.run(main, ['--n=3']) == 3
  for argv, words in (
    (['--n=-1'], 'error: --n=-1 is negative'),
    ([], 'error: the following arguments are required: --n'),
    (['--n=x'], "error: argument --n: invalid int value: 'x'"),
  ):
    with pytest.raises(SystemExit) as e:
      cli_util.run(main, argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err == words + '\n', captured
  with pytest.raises(KeyError):  # Anything else keeps its traceback.
    cli_util.run(main, ['--n=0'])
  # read_json: a missing or damaged file is one line naming it.
  path = tmp_path / 'x.json'
  with pytest.raises(
    cli_util.ToolError, match=f'^{path} does not exist: make it$'
  ):
    cli_util.read_json(str(path), missing='make it')
  path.write_text('{"a": ')
  with pytest.raises(saved_run.RunError, match=f'^{path} is not readable: '):
    cli_util.read_json(str(path), saved_run.RunError)


def test_entry_points_and_shims():
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO, 'setup.cfg'))
  scripts = dict(
    line.split(' = ')
    for line in parser['options.entry_points']['console_scripts']
    .strip()
    .splitlines()
    if not line.startswith('#')
  )
  commands = os.path.join(REPO, 'layermatch_jax', 'commands')
  modules = sorted(
    n[:-3] for n in os.listdir(commands) if n.endswith('.py') and n[0] != '_'
  )
  assert sorted(scripts) == sorted(
    f'layermatch-{m.replace("_", "-")}' for m in modules
  )
  for command, target in scripts.items():
    module, function = target.split(':')
    assert callable(getattr(importlib.import_module(module), function)), command
  # Each command has its shim tools/NAME.py; no tool edits sys.path but tools/_path.py.
  shims = sorted(
    n[:-3]
    for n in os.listdir(os.path.join(REPO, 'tools'))
    if n.endswith('.py') and not n.startswith('_') and n != 'mutation_check.py'
  )
  assert shims == modules
  for name in shims:
    with open(os.path.join(REPO, 'tools', f'{name}.py')) as f:
      text = f.read()
    assert (
      f'from layermatch_jax.commands import {name}\n' in text
      and 'sys.path' not in text
    )
    assert f'  {name}.run()\n' in text


def test_an_installed_command_finds_the_configs(tmp_path):
  """Run from elsewhere, without the repository on sys.path (as a console script
  runs): configs/ comes from the checkout that holds the package."""
  (tmp_path / 'data' / 'train').mkdir(parents=True)
  (tmp_path / 'data' / 'test').mkdir()
  (tmp_path / 'old_run').mkdir()
  (tmp_path / 'old_run' / 'config.json').write_text('{"algorithm": "fixmatch"}')
  script = '\n'.join(
    [
      'import os, sys',
      'import layermatch_jax',
      f'sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != {REPO!r}]',
      'from layermatch_jax import saved_run',
      'from layermatch_jax.commands import learning_benchmark',
      'config = saved_run.load_config("old_run")',
      'print(config.algorithm, config.data.name, file=sys.stderr)',
      'learning_benchmark.run(sys.argv[1:])',
    ]
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-c',
      script,
      '--data=data',
      '--out=out',
      '--algorithms=supervised',
      '--num_labels=40',
      '--seeds=0',
      '--dry_run',
    ],
    cwd=tmp_path,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr
  assert (
    'fixmatch cifar10' in proc.stderr.splitlines()
  )  # Filled from configs/default.py.
  # The budget's steps, read from configs/cifar10_cpu.py; the run starts in the checkout.
  assert '--config.num_train_steps=1500' in proc.stdout
  assert sorted(os.listdir(tmp_path)) == ['data', 'old_run']
