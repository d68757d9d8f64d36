"""Prediction on new images (layermatch_jax/predict.py, tools/predict.py) and the
exported bundle (layermatch_jax/bundle.py, tools/export.py), on one tiny run
trained on an image folder made here. The tools' code is in layermatch_jax/commands/."""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from layermatch_jax import bundle
from layermatch_jax import predict
from layermatch_jax import saved_run
from layermatch_jax import train
from layermatch_jax.data import sources
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = {'blue': (40, 60, 200), 'green': (50, 180, 60), 'red': (200, 50, 40)}
CLASSES = sorted(COLOURS)
# Blends of two classes' colours: the model is unsure of these.
MIXES = [
  ('blue', 'red', 0.35),
  ('blue', 'red', 0.5),
  ('green', 'red', 0.45),
  ('green', 'blue', 0.55),
  ('red', 'green', 0.4),
  ('red', 'blue', 0.6),
]
# What expanding the folder NEW must give, in order (notes.txt and the hidden
# file are not images by the folder rule).
NEW_IMAGES = (
  ['gray.png']
  + [f'mixed/m{i}.png' for i in range(len(MIXES))]
  + ['photo.jpg']
  + [f'pure/{c}.png' for c in CLASSES]
)


def _tool(name, *args):
  """Runs tools/<name>.py from the repo root with this process's env (XLA_FLAGS)."""
  return subprocess.run(
    [sys.executable, os.path.join('tools', f'{name}.py'), *args],
    cwd=REPO,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=300,
  )


def _assert_error(proc):
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), proc.stderr
  return lines[0]


def _listing(root):
  """Every file below `root` with its bytes."""
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      with open(os.path.join(d, n), 'rb') as f:
        out[os.path.relpath(os.path.join(d, n), root)] = f.read()
  return out


def _save(path, pixels, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, **kwargs)


def _make_images(root):
  """DATA/train|test/<colour>/, DATA/unlabeled/ (10x10 PNGs), NEW/ and BAD/."""
  rng = np.random.default_rng(0)
  noisy = lambda colour, shape=(10, 10): (
    np.asarray(colour) + rng.normal(0, 40, (*shape, 3))
  )
  for name in CLASSES:
    for i in range(8):
      _save(f'{root}/data/train/{name}/{i}.png', noisy(COLOURS[name]))
    for i in range(4):
      _save(f'{root}/data/test/{name}/{i}.png', noisy(COLOURS[name]))
  for i in range(6):
    _save(f'{root}/data/unlabeled/u{i}.png', noisy(COLOURS[CLASSES[i % 3]]))
  new = f'{root}/new'
  for name in CLASSES:
    _save(f'{new}/pure/{name}.png', noisy(COLOURS[name]))
  for i, (a, b, w) in enumerate(MIXES):
    _save(
      f'{new}/mixed/m{i}.png',
      noisy(w * np.asarray(COLOURS[a]) + (1 - w) * np.asarray(COLOURS[b])),
    )
  _save(
    f'{new}/photo.jpg', noisy(COLOURS['green'], (9, 13)), quality=90
  )  # Not square.
  Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), 'L').save(
    f'{new}/gray.png'
  )
  with open(f'{new}/notes.txt', 'w') as f:
    f.write('not an image')
  _save(f'{new}/.hidden.png', noisy(COLOURS['red']))
  os.makedirs(f'{root}/bad')
  with open(f'{root}/bad/garbage.jpg', 'wb') as f:
    f.write(b'\xff\xd8 this is no JPEG')
  os.makedirs(f'{root}/empty')


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('predict_images'))
  _make_images(root)
  return root


@pytest.fixture(scope='module')
def workdir(images):
  path = os.path.join(os.path.dirname(images), 'predict_run')
  config = helpers.tiny_config(
    'layermatch',
    **{
      'data.name': 'folder',
      'data.dir': f'{images}/data',
      'data.num_labels': 12,
      'batch_size': 8,
      'uratio': 2,
      'num_train_steps': 30,
      'eval_every_steps': 30,
      'checkpoint_every_steps': 15,
      'log_every_steps': 15,
      'eval_batch_size': 16,
      # One compiled train step, not a second with per-term gradient norms.
      'grad_norms_by_term': False,
    },
  )
  train.train_and_evaluate(config, path)
  summary = os.path.join(path, saved_run.DATA_SUMMARY_FILE)
  if not os.path.exists(summary):  # A trainer older than data_summary.json.
    with open(summary, 'w') as f:
      json.dump(
        dict(
          dataset='folder',
          class_names=CLASSES,
          image_size=8,
          unlabeled_pool_size=24 + 6,
        ),
        f,
      )
  return path


@pytest.fixture(scope='module')
def predictor(workdir):
  return predict.Predictor.from_workdir(workdir)


@pytest.fixture(scope='module')
def exported(workdir):
  """tools/export.py's bundle of the latest checkpoint: (MODEL, the process)."""
  out = os.path.join(os.path.dirname(workdir), 'model')
  return out, _tool('export', f'--workdir={workdir}', f'--out={out}')


def _new_paths(images):
  return [f'{images}/new/{name}' for name in NEW_IMAGES]


def test_predictor_matches_evaluation(workdir, predictor, images):
  from layermatch_jax import data, evaluation  # pylint: disable=g-import-not-at-top

  assert predictor.class_names == CLASSES and predictor.step == 30
  run = saved_run.SavedRun(workdir)
  state, _ = run.restore()
  evaluated = evaluation.evaluate_dataset(
    run.learner,
    state,
    data.make_eval_iterator(
      run.source, run.config, num_devices=run.learner.num_devices
    ),
    return_predictions=True,
  )
  # The folder loader's test order: classes, then files, sorted.
  test = predict.expand_inputs([f'{images}/data/test'])
  assert test == [
    f'{images}/data/test/{c}/{i}.png' for c in CLASSES for i in range(4)
  ]
  result = predictor.predict_files(test, batch_size=5)
  assert [p.class_index for p in result] == evaluated['predictions'].tolist()
  assert [p.class_name for p in result] == [
    CLASSES[i] for i in evaluated['predictions']
  ]
  assert not result.skipped
  # Probabilities, on images the model is unsure of, against the pmapped logits.
  x = np.stack([sources.decode_file(p, 8) for p in _new_paths(images)])
  probs = predictor.predict_arrays(x, batch_size=4)
  logits = run.learner.predict(state, np.concatenate([x, x[: 16 - len(x)]]))[
    : len(x)
  ]
  want = np.exp(logits - logits.max(-1, keepdims=True))
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, want, atol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert (
    probs.max(-1).min() < 0.99
  )  # The blends are not all certain: statuses differ below.
  records = predictor.predict_files(_new_paths(images), top_k=2)
  for r, p in zip(records, probs):
    assert r.confidence == pytest.approx(p.max(), abs=1e-6)
    assert [name for name, _ in r.top_k] == [
      CLASSES[i] for i in np.argsort(-p)[:2]
    ]


def test_data_summary_spares_the_data(workdir, predictor, images, tmp_path):
  x = np.stack([sources.decode_file(p, 8) for p in _new_paths(images)])
  want = predictor.predict_arrays(x)
  # The data moved away: with data_summary.json no data is read.
  moved = str(tmp_path / 'moved')
  shutil.copytree(workdir, moved)
  config = json.load(open(f'{moved}/config.json'))
  config['data']['dir'] = str(tmp_path / 'gone')
  with open(f'{moved}/config.json', 'w') as f:
    json.dump(config, f)
  p = predict.Predictor.from_workdir(moved, step=15)
  assert p.step == 15 and p.class_names == CLASSES
  assert (
    np.abs(p.predict_arrays(x) - want).max() > 1e-4
  )  # An earlier checkpoint.
  os.remove(f'{moved}/data_summary.json')
  with pytest.raises(predict.PredictError, match='gone'):
    predict.Predictor.from_workdir(moved)
  # A run older than data_summary.json, with its data: class names from the source.
  old = str(tmp_path / 'old')
  shutil.copytree(workdir, old)
  os.remove(f'{old}/data_summary.json')
  p = predict.Predictor.from_workdir(old)
  assert p.class_names == CLASSES and p.step == 30
  np.testing.assert_allclose(p.predict_arrays(x), want, atol=1e-6)


def test_expand_inputs(images, monkeypatch):
  new = f'{images}/new'
  monkeypatch.chdir(images)
  got = predict.expand_inputs(
    [
      'new/pure/red.png',
      new,
      'data/test/*/0.png',
      './new/pure/red.png',
      'new/notes.txt',
    ]
  )
  assert got == (
    ['new/pure/red.png']
    + [f'{new}/{n}' for n in NEW_IMAGES if n != 'pure/red.png']
    + [f'data/test/{c}/0.png' for c in CLASSES]
    + ['new/notes.txt']
  )
  assert predict.expand_inputs(['new/**/m1.png']) == ['new/mixed/m1.png']
  for bad, words in (
    ('missing.png', 'missing.png does not exist'),
    ('new/*.gif', 'new/*.gif matches no file'),
    ('empty', 'folder empty has no image files'),
  ):
    with pytest.raises(predict.PredictError, match=re.escape(words)):
      predict.expand_inputs(['new/gray.png', bad])


def _read_csv(text):
  return list(csv.DictReader(io.StringIO(text)))


def test_cli_csv_and_jsonl(workdir, predictor, images, tmp_path):
  expected = _new_paths(images) + [
    f'{images}/data/test/{c}/0.png' for c in CLASSES
  ]
  confidences = sorted(
    {
      float(str(np.float32(p.confidence)))
      for p in predictor.predict_files(expected)
    }
  )
  assert len(confidences) >= 2
  mid = len(confidences) // 2
  threshold = (confidences[mid - 1] + confidences[mid]) / 2
  out_csv, out_jsonl = str(tmp_path / 'p.csv'), str(tmp_path / 'p.jsonl')
  proc = _tool(
    'predict',
    f'--workdir={workdir}',
    f'{images}/new',
    f'{images}/data/test/*/0.png',  # Quoted: the tool expands it.
    f'{images}/new/pure/red.png',  # A repeat: dropped.
    '--top_k=2',
    f'--min_confidence={threshold}',
    '--batch_size=4',
    f'--csv={out_csv}',
    f'--jsonl={out_jsonl}',
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout == ''
  with open(out_csv) as f:
    text = f.read()
  assert (
    text.splitlines()[0]
    == 'path,prediction,confidence,status,top2,top2_confidence'
  )
  rows = _read_csv(text)
  with open(out_jsonl) as f:
    objects = [json.loads(line) for line in f]
  assert [r['path'] for r in rows] == [o['path'] for o in objects] == expected
  uncertain = 0
  for r, o, p in zip(rows, objects, predictor.predict_files(expected, top_k=2)):
    confidence = float(r['confidence'])
    assert (
      o['confidence'] == confidence == pytest.approx(p.confidence, abs=1e-6)
    )
    assert r['prediction'] == o['prediction'] == p.class_name
    assert (
      r['status']
      == o['status']
      == ('uncertain' if confidence < threshold else 'ok')
    )
    uncertain += r['status'] == 'uncertain'
    assert [t['class'] for t in o['top_k']] == [n for n, _ in p.top_k]
    assert o['top_k'][0] == {'class': o['prediction'], 'confidence': confidence}
    assert (r['top2'], float(r['top2_confidence'])) == (
      o['top_k'][1]['class'],
      o['top_k'][1]['confidence'],
    )
    assert sorted(o) == ['confidence', 'path', 'prediction', 'status', 'top_k']
  assert uncertain == mid  # Exactly the confidences below the threshold.
  assert f'({mid} uncertain)' in proc.stderr
  assert sorted(os.listdir(tmp_path)) == [
    'p.csv',
    'p.jsonl',
  ]  # No temporary file left.


def test_export_then_predict_in_a_fresh_interpreter(
  exported, predictor, images, tmp_path
):
  model, proc = exported
  assert proc.returncode == 0, proc.stderr
  printed = json.loads(proc.stdout)
  assert printed['model'] == model and printed['step'] == 30
  assert printed['files'] == ['model.json', 'predict.jaxexport', 'weights.npz']
  with open(f'{model}/model.json') as f:
    meta = json.load(f)
  assert (
    meta['format_version'] == bundle.FORMAT_VERSION
    and meta['class_names'] == CLASSES
  )
  assert (
    meta['image_size'] == 8
    and meta['mean'] == [0.5] * 3
    and meta['std'] == [0.25] * 3
  )
  assert 'cpu' in meta['platforms'] and meta['source']['step'] == 30
  x = np.stack([sources.decode_file(p, 8) for p in _new_paths(images)])
  np.save(tmp_path / 'x.npy', x)
  script = '\n'.join(
    [
      'import json, sys',
      'import numpy as np',
      'from layermatch_jax import bundle',
      'model = bundle.load_bundle(sys.argv[1])',
      'x = np.load(sys.argv[2])',
      # Batch sizes unlike the export's: 1, then 5 in batches of 4 (the last padded).
      'out = dict(one=model.predict_arrays(x[:1]).tolist(),',
      '           five=model.predict_arrays(x[:5], batch_size=4).tolist(),',
      '           files=[[p.path, p.confidence] for p in model.predict_files(sys.argv[3:])],',
      '           modules=sorted(m for m in sys.modules if m.split(".")[0] in (',
      '               "flax", "optax", "orbax", "ml_collections", "configs") or m in (',
      '               "layermatch_jax.models", "layermatch_jax.learner", "layermatch_jax.state",',
      '               "layermatch_jax.evaluation", "layermatch_jax.saved_run")))',
      'print(json.dumps(out))',
    ]
  )
  proc = subprocess.run(
    [
      sys.executable,
      '-c',
      script,
      model,
      str(tmp_path / 'x.npy'),
      *_new_paths(images)[:3],
    ],
    cwd=REPO,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert out['modules'] == []
  want = predictor.predict_arrays(x)
  np.testing.assert_allclose(out['one'], want[:1], atol=1e-5)
  np.testing.assert_allclose(out['five'], want[:5], atol=1e-5)
  assert [p for p, _ in out['files']] == _new_paths(images)[:3]
  np.testing.assert_allclose(
    [c for _, c in out['files']], want[:3].max(-1), atol=1e-5
  )


def test_cli_with_bundle_skips_bad_files(exported, predictor, images):
  model, _ = exported
  paths = [
    f'{images}/new/pure/blue.png',
    f'{images}/bad/garbage.jpg',
    f'{images}/new/photo.jpg',
  ]
  proc = _tool(
    'predict', f'--model={model}', *paths, '--skip_bad_files', '--top_k=3'
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'skipped: {paths[1]} (')
  rows = _read_csv(proc.stdout)  # No --csv: the CSV on stdout.
  assert list(rows[0]) == [
    'path',
    'prediction',
    'confidence',
    'status',
    'top2',
    'top2_confidence',
    'top3',
    'top3_confidence',
  ]
  good = [paths[0], paths[2]]
  assert [r['path'] for r in rows] == good
  want = predictor.predict_files(good)
  assert [r['prediction'] for r in rows] == [p.class_name for p in want]
  np.testing.assert_allclose(
    [float(r['confidence']) for r in rows],
    [p.confidence for p in want],
    atol=1e-5,
  )
  assert {r['status'] for r in rows} == {
    'ok'
  }  # --min_confidence defaults to 0.


def _main_error(capsys, argv):
  """The predict command in this process: the one error line."""
  from layermatch_jax.commands import predict as predict_tool  # pylint: disable=g-import-not-at-top

  with pytest.raises(SystemExit) as e:
    predict_tool.run(argv)
  assert e.value.code == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert (
    captured.out == '' and len(lines) == 1 and lines[0].startswith('error:')
  ), captured
  return lines[0]


def test_cli_bad_input(workdir, exported, images, tmp_path, capsys):
  model, _ = exported
  img = f'{images}/new/pure/red.png'
  out = str(tmp_path / 'out.csv')
  w, m = f'--workdir={workdir}', f'--model={model}'
  cases = [
    ([f'--workdir={tmp_path}/missing', img], 'missing'),
    ([f'--workdir={images}', img], 'config.json'),
    ([w, '--step=7', img], '--step=7 has no checkpoint'),
    ([w, m, img], 'exactly one of --workdir'),
    ([img], 'exactly one of --workdir'),
    ([m, '--step=30', img], '--step is for --workdir'),
    ([w], 'IMAGES'),
    ([w, f'{images}/nothing/*.png'], 'matches no file'),
    ([w, f'{images}/missing.png'], 'missing.png does not exist'),
    ([w, f'{images}/empty'], 'has no image files'),
    ([m, '--min_confidence=1.5', img], '--min_confidence=1.5'),
    ([m, '--min_confidence=nan', img], '--min_confidence=nan'),
    ([m, '--min_confidence=high', img], 'min_confidence'),
    ([m, '--top_k=0', img], '--top_k=0'),
    ([m, '--top_k=4', img], '--top_k=4 is not valid: the model has 3 classes'),
    ([m, '--batch_size=0', img], '--batch_size=0'),
    ([f'--model={tmp_path}', img], 'model.json does not exist'),
    (
      [m, img, f'{images}/bad/garbage.jpg'],
      f'cannot read image {images}/bad/garbage.jpg',
    ),
    ([m, img, f'--csv={out}', f'--jsonl={out}'], 'same file'),
    ([m, img, f'--csv={tmp_path}/no/dir/out.csv'], 'does not exist'),
  ]
  for argv, words in cases:
    if not any(a.startswith('--csv') for a in argv):
      argv = argv + [f'--csv={out}']
    line = _main_error(capsys, argv)
    assert words in line, (argv, line)
    assert not os.path.exists(out), argv  # Nothing written.
  # An existing output is kept as it is.
  with open(out, 'w') as f:
    f.write('keep')
  assert '--overwrite' in _main_error(capsys, [m, img, f'--csv={out}'])
  assert open(out).read() == 'keep'
  from layermatch_jax.commands import predict as predict_tool  # pylint: disable=g-import-not-at-top

  predict_tool.main([m, img, f'--csv={out}', '--overwrite'])
  assert _read_csv(open(out).read())[0]['path'] == img
  # The real process: one line too, whatever JAX and orbax print on the way.
  line = _assert_error(
    _tool(
      'predict',
      w,
      img,
      f'{images}/bad/garbage.jpg',
      f'--jsonl={tmp_path}/x.jsonl',
    )
  )
  assert f'{images}/bad/garbage.jpg' in line and '--skip_bad_files' in line
  assert not os.path.exists(f'{tmp_path}/x.jsonl')


def _damaged_copies(model, root):
  """(directory, words of the error) for bundles broken in different ways."""

  def copy(name):
    path = os.path.join(root, name)
    shutil.copytree(model, path)
    return path

  out = []
  path = copy('no_function')
  os.remove(f'{path}/{bundle.FUNCTION_FILE}')
  out.append((path, 'predict.jaxexport does not exist'))
  path = copy('version')
  meta = json.load(open(f'{path}/model.json'))
  meta['format_version'] = 99
  json.dump(meta, open(f'{path}/model.json', 'w'))
  out.append((path, 'format_version 99'))
  path = copy('truncated')
  with open(f'{path}/{bundle.WEIGHTS_FILE}', 'r+b') as f:
    f.truncate(1000)
  out.append((path, 'weights.npz is damaged'))
  path = copy('garbage')
  with open(f'{path}/{bundle.FUNCTION_FILE}', 'wb') as f:
    f.write(b'\x00' * 64)
  out.append((path, 'predict.jaxexport is damaged'))
  path = copy('json')
  with open(f'{path}/model.json', 'w') as f:
    f.write('{"format": ')
  out.append((path, 'model.json is not readable'))
  return out


def test_bad_bundles(exported, workdir, tmp_path, capsys):
  model, _ = exported
  for path, words in _damaged_copies(model, str(tmp_path)):
    with pytest.raises(bundle.BundleError) as e:
      bundle.load_bundle(path)
    assert words in str(e.value) and '\n' not in str(e.value), str(e.value)
  line = _main_error(
    capsys, [f'--model={tmp_path}/garbage', f'{model}/model.json']
  )
  assert 'predict.jaxexport is damaged' in line
  # Export never overwrites: a non-empty MODEL is refused and left as it was.
  before = _listing(model)
  line = _assert_error(
    _tool('export', f'--workdir={workdir}', f'--out={model}')
  )
  assert model in line and 'not an empty directory' in line
  assert _listing(model) == before
  line = _assert_error(
    _tool('export', f'--workdir={workdir}', '--step=3', f'--out={tmp_path}/new')
  )
  assert '--step=3' in line and not os.path.exists(f'{tmp_path}/new')
  assert not [n for n in os.listdir(os.path.dirname(model)) if '.tmp-' in n]


def test_export_falls_back_and_leaves_nothing_on_failure(
  predictor, tmp_path, monkeypatch
):
  real_export = bundle._export  # pylint: disable=protected-access

  def cpu_only(fn, weights, image_size, platforms):
    if list(platforms) != ['cpu']:
      raise ValueError('cannot lower for cuda here')
    return real_export(fn, weights, image_size, platforms)

  monkeypatch.setattr(bundle, '_export', cpu_only)
  meta = bundle.export_bundle(predictor, str(tmp_path / 'cpu'))
  assert meta['platforms'] == ['cpu'] and meta['source']['step'] == 30
  assert 'cannot lower for cuda here' in meta['platform_note']
  assert bundle.load_bundle(str(tmp_path / 'cpu')).platforms == ('cpu',)

  # A failure after files were written (here the check that loads them back)
  # leaves neither MODEL nor its temporary sibling.
  def broken(*_):
    raise bundle.BundleError('no match')

  monkeypatch.setattr(bundle, '_verify', broken)
  with pytest.raises(bundle.BundleError, match='no match'):
    bundle.export_bundle(predictor, str(tmp_path / 'half'))
  assert sorted(os.listdir(tmp_path)) == ['cpu']
  # An empty MODEL directory may be filled.
  os.mkdir(tmp_path / 'half')
  monkeypatch.undo()
  bundle.export_bundle(predictor, str(tmp_path / 'half'))
  assert sorted(os.listdir(tmp_path / 'half')) == [
    'model.json',
    'predict.jaxexport',
    'weights.npz',
  ]
