"""Sources: digits, image folders, and TFDS (mocked, never downloaded)."""

import json
import logging
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from layermatch_jax import data
from layermatch_jax.data import folder
from layermatch_jax.data import tfds_sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(name, size=12, **kwargs):
  values = dict(
    name=name, dir=None, image_size=size, download=False, skip_bad_files=False
  )
  values.update(kwargs)
  return ml_collections.ConfigDict(values)


# --- digits -------------------------------------------------------------------


@pytest.mark.parametrize('size', [16, 32])
def test_digits(size):
  source = data.load_source(data_config('digits', size))
  assert source.image_shape == (size, size, 3) and source.num_classes == 10
  assert (len(source.train), len(source.test), len(source.extra_unlabeled)) == (
    1437,
    360,
    0,
  )
  ex = source.train[0]
  assert ex['image'].shape == (size, size, 3) and ex['image'].dtype == np.uint8
  assert ex['label'] == 0 and ex['image'].max() > 200  # 0..16 scaled to 0..255.
  assert set(source.test.labels.tolist()) == set(range(10))


# --- folder -------------------------------------------------------------------


def _save(path, size, color, mode='RGB', fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.new('RGB', size, color)
  if mode != 'RGB':
    image = image.convert(mode)
  image.save(path, format=fmt)


def make_folder(root):
  """3 classes of solid-colour images in mixed formats, sizes and modes."""
  red, green, blue = (250, 0, 0), (0, 250, 0), (0, 0, 250)
  _save(f'{root}/train/ant/a.jpg', (17, 23), red)
  _save(f'{root}/train/ant/b.png', (40, 9), red)
  _save(f'{root}/train/ant/nested/c.BMP', (5, 5), red, fmt='BMP')
  _save(f'{root}/train/bee/a.png', (31, 30), green, mode='L')  # Grayscale.
  _save(f'{root}/train/bee/b.gif', (12, 12), green, mode='P')
  _save(f'{root}/train/cat/a.png', (64, 48), blue, mode='RGBA')
  _save(f'{root}/test/ant/t.jpg', (13, 13), red)
  _save(f'{root}/test/bee/t.bmp', (8, 20), green)
  _save(f'{root}/test/cat/t.png', (9, 9), blue)
  _save(f'{root}/unlabeled/u1.jpg', (50, 50), red)
  _save(f'{root}/unlabeled/sub/u2.png', (7, 11), blue, mode='L')
  # Not images: ignored.
  with open(f'{root}/train/ant/notes.txt', 'w') as f:
    f.write('not an image')
  with open(f'{root}/train/bee/.DS_Store', 'wb') as f:
    f.write(b'\0\1\2')


def test_folder_source(tmp_path):
  make_folder(tmp_path)
  source = data.load_source(data_config('folder', 12, dir=str(tmp_path)))
  assert source.class_names == ('ant', 'bee', 'cat') and source.num_classes == 3
  assert source.image_shape == (12, 12, 3)
  assert (len(source.train), len(source.test), len(source.extra_unlabeled)) == (
    6,
    3,
    2,
  )
  np.testing.assert_array_equal(source.train.labels, [0, 0, 0, 1, 1, 2])
  np.testing.assert_array_equal(source.test.labels, [0, 1, 2])
  np.testing.assert_array_equal(source.extra_unlabeled.labels, [-1, -1])
  images, _ = source.train.get_batch(np.arange(6))
  assert images.shape == (6, 12, 12, 3) and images.dtype == np.uint8
  mean = images.reshape(6, -1, 3).mean(1)
  assert (mean[:3, 0] > 200).all()  # ant: red.
  assert (np.abs(mean[3] - mean[3].mean()) < 2).all()  # Grayscale -> R = G = B.
  assert mean[5, 2] > 200 and mean[5, 0] < 30  # cat: RGBA blue -> RGB blue.
  assert source.num_skipped_files == 0


def test_folder_lazy_mode_matches_memory(tmp_path):
  make_folder(tmp_path)
  eager = data.load_source(data_config('folder', 12, dir=str(tmp_path)))
  lazy = data.load_source(
    data_config('folder', 12, dir=str(tmp_path), max_memory_mb=0)
  )
  assert isinstance(lazy.train, data.LazyRecords)
  np.testing.assert_array_equal(
    lazy.train.get_batch([5, 0])[0], eager.train.get_batch([5, 0])[0]
  )
  np.testing.assert_array_equal(
    lazy.extra_unlabeled[1]['image'], eager.extra_unlabeled[1]['image']
  )


def test_folder_decoded_by_processes_matches_threads(tmp_path, monkeypatch):
  make_folder(tmp_path)
  (tmp_path / 'train' / 'bee' / 'x.jpg').write_bytes(b'not a jpeg')
  threads = data.load_source(
    data_config('folder', 12, dir=str(tmp_path), skip_bad_files=True)
  )
  monkeypatch.setattr(folder, 'MIN_FILES_FOR_PROCESSES', 0)
  procs = data.load_source(
    data_config(
      'folder', 12, dir=str(tmp_path), skip_bad_files=True, decode_processes=2
    )
  )
  assert procs.num_skipped_files == threads.num_skipped_files == 1
  for part in ('train', 'test', 'extra_unlabeled'):
    np.testing.assert_array_equal(
      getattr(procs, part).images, getattr(threads, part).images
    )
    np.testing.assert_array_equal(
      getattr(procs, part).labels, getattr(threads, part).labels
    )


def test_folder_corrupt_file(tmp_path, caplog):
  make_folder(tmp_path)
  bad = tmp_path / 'train' / 'bee' / 'x.jpg'
  bad.write_bytes(np.random.default_rng(0).bytes(300))
  with pytest.raises(data.DataError) as info:
    data.load_source(data_config('folder', 12, dir=str(tmp_path)))
  assert str(bad) in str(info.value) and 'skip_bad_files' in str(info.value)
  assert '\n' not in str(info.value)
  with caplog.at_level(logging.WARNING):
    source = data.load_source(
      data_config('folder', 12, dir=str(tmp_path), skip_bad_files=True)
    )
  assert source.num_skipped_files == 1 and len(source.train) == 6
  assert any('Skipped 1 unreadable' in r.getMessage() for r in caplog.records)


def test_folder_empty_class(tmp_path):
  make_folder(tmp_path)
  os.makedirs(tmp_path / 'train' / 'dog')
  os.makedirs(tmp_path / 'test' / 'dog')
  with pytest.raises(data.DataError, match=r'train/dog has no images'):
    data.load_source(data_config('folder', 12, dir=str(tmp_path)))


def test_folder_test_classes_must_match(tmp_path):
  make_folder(tmp_path)
  os.rename(tmp_path / 'test' / 'cat', tmp_path / 'test' / 'cow')
  with pytest.raises(
    data.DataError, match=r"missing in test \['cat'\], not in train \['cow'\]"
  ):
    data.load_source(data_config('folder', 12, dir=str(tmp_path)))


def test_folder_summary_counts_what_is_in_the_folder(tmp_path):
  make_folder(tmp_path)
  with open(tmp_path / 'README.txt', 'w') as f:
    f.write('a file beside train/')
  source = data.load_source(data_config('folder', 12, dir=str(tmp_path)))
  summary = data.describe(source, data.make_split(source, 'all', seed=0))
  assert summary['class_names'] == ['ant', 'bee', 'cat']
  assert [
    (c['train'], c['labeled'], c['test']) for c in summary['classes']
  ] == [(3, 3, 1), (2, 2, 1), (1, 1, 1)]
  assert (
    summary['num_train'],
    summary['num_labeled'],
    summary['num_test'],
    summary['num_extra_unlabeled'],
    summary['unlabeled_pool_size'],
  ) == (6, 6, 3, 2, 8)
  assert summary['test_from'] == 'test/' and summary['evaluation']
  ignored = {
    os.path.relpath(f['path'], tmp_path): f['why']
    for f in summary['ignored_files']
  }
  assert ignored == {
    'README.txt': 'not train/, test/ or unlabeled/',
    'train/ant/notes.txt': 'not an image: extension .txt',
    'train/bee/.DS_Store': 'hidden',
  }
  assert summary['skipped_files'] == []
  sizes = summary['stored_image_sizes']  # Every image's stored size, as found.
  assert (
    sum(sizes.values()) == 11 and sizes['17x23'] == 1 and sizes['13x13'] == 1
  )
  json.dumps(summary)  # JSON-ready as it is.
  text = data.format_summary(summary)
  assert '  ant          3        3        1' in text
  assert '  total        6        6        3' in text
  assert 'ignored 3 files' in text and 'test: from test/' in text


def test_folder_summary_lists_skipped_files(tmp_path):
  make_folder(tmp_path)
  with open(tmp_path / 'train' / 'cat' / 'broken.png', 'wb') as f:
    f.write(b'not a png')
  source = data.load_source(
    data_config('folder', 12, dir=str(tmp_path), skip_bad_files=True)
  )
  summary = data.describe(source, data.make_split(source, 'all', seed=0))
  assert [os.path.basename(f['path']) for f in summary['skipped_files']] == [
    'broken.png'
  ]
  assert summary['classes'][2]['train'] == 1
  assert 'skipped (unreadable) 1 file: ' in data.format_summary(summary)


@pytest.mark.parametrize(
  'val_per_class,expected',
  [
    (0.2, [1, 1, 2, 0]),
    (0.5, [1, 2, 5, 0]),
    (3, [1, 3, 3, 0]),
    (1, [1, 1, 1, 0]),
    (0, [0, 0, 0, 0]),
  ],
)
def test_holdout_counts_leave_an_image_to_train_on(val_per_class, expected):
  # Classes of 2, 4, 10 and 1 images.
  np.testing.assert_array_equal(
    folder.holdout_counts([2, 4, 10, 1], val_per_class), expected
  )


def _uneven_folder(root, counts=(2, 4, 10, 1)):
  """Classes c0..c3 of `counts` images whose red channel spells (class, index)."""
  for c, n in enumerate(counts):
    for i in range(n):
      _save(f'{root}/train/c{c}/{i:02d}.png', (6, 6), (10 * c + i, 0, 0))


def test_folder_without_test_holds_out_labeled_images(tmp_path):
  _uneven_folder(tmp_path)
  source = data.load_source(
    data_config('folder', 6, dir=str(tmp_path), val_per_class=0.5)
  )
  np.testing.assert_array_equal(
    np.bincount(source.test.labels, minlength=4), [1, 2, 5, 0]
  )
  np.testing.assert_array_equal(
    np.bincount(source.train.labels, minlength=4), [1, 2, 5, 1]
  )
  red = lambda records: set(
    records.get_batch(np.arange(len(records)))[0][:, 0, 0, 0].tolist()
  )
  held, kept = red(source.test), red(source.train)
  assert (
    not held & kept and len(held | kept) == 17
  )  # Held out = not trained on, not even unlabeled.
  again = data.load_source(
    data_config('folder', 6, dir=str(tmp_path), val_per_class=0.5)
  )
  assert red(again.test) == held  # Fixed, whatever config.seed.
  summary = data.describe(source, data.make_split(source, 'all', seed=0))
  assert (
    summary['test_from'] == 'held out from train/'
    and summary['val_per_class'] == 0.5
  )
  assert 'test: 8 labeled images held out from train/' in data.format_summary(
    summary
  )
  none = data.load_source(
    data_config('folder', 6, dir=str(tmp_path), val_per_class=0)
  )
  assert len(none.test) == 0 and len(none.train) == 17
  summary = data.describe(none, data.make_split(none, 'all', seed=0))
  assert not summary[
    'evaluation'
  ] and 'evaluation: NONE' in data.format_summary(summary)


def test_folder_missing_dirs(tmp_path):
  with pytest.raises(data.DataError, match='does not exist'):
    data.load_source(data_config('folder', 12, dir=str(tmp_path / 'nowhere')))
  with pytest.raises(data.DataError, match='data.dir is not set'):
    data.load_source(data_config('folder', 12))
  with pytest.raises(data.DataError, match='no train/ folder'):
    data.load_source(data_config('folder', 12, dir=str(tmp_path)))
  os.makedirs(tmp_path / 'train')
  with pytest.raises(data.DataError, match='has no class subfolders'):
    data.load_source(data_config('folder', 12, dir=str(tmp_path)))


def test_unknown_name_and_bad_size():
  with pytest.raises(data.DataError, match='not a known dataset'):
    data.load_source(data_config('mnist'))
  with pytest.raises(data.DataError, match='image_size'):
    data.load_source(data_config('digits', 0))


# --- TFDS (mock_data patches DatasetBuilder.as_data_source) --------------------


@pytest.fixture
def no_download(monkeypatch):
  """Records every tfds.data_source call; fails on download=True."""
  calls = []
  real = tfds.data_source

  def spy(*args, **kwargs):
    calls.append(kwargs)
    assert kwargs.get('download') is False
    return real(*args, **kwargs)

  monkeypatch.setattr(tfds, 'data_source', spy)
  return calls


def test_cifar10_mocked(no_download):
  with tfds.testing.mock_data(num_examples=12):
    source = data.load_source(data_config('cifar10', 32, dir='/nonexistent'))
  assert source.image_shape == (32, 32, 3) and source.num_classes == 10
  assert (len(source.train), len(source.test), len(source.extra_unlabeled)) == (
    12,
    12,
    0,
  )
  assert source.train.labels.min() >= 0 and source.train.labels.max() < 10
  assert source.train[3]['image'].dtype == np.uint8
  assert len(no_download) == 2


def test_stl10_mocked_unlabelled_is_extra(no_download):
  with tfds.testing.mock_data(num_examples=9):
    source = data.load_source(data_config('stl10', 24, dir='/nonexistent'))
  assert source.image_shape == (24, 24, 3)
  assert (len(source.train), len(source.test), len(source.extra_unlabeled)) == (
    9,
    9,
    9,
  )
  np.testing.assert_array_equal(source.extra_unlabeled.labels, -1)
  images, _ = source.extra_unlabeled.get_batch([0, 8])
  assert images.shape == (2, 24, 24, 3)
  assert [c['split'] for c in no_download] == ['train', 'test', 'unlabelled']


def test_imagenet100_mocked(tmp_path, no_download):
  with tfds.testing.mock_data(num_examples=300):
    with pytest.raises(data.DataError, match='--dataset=imagenet100'):
      data.load_source(data_config('imagenet100', 20, dir=str(tmp_path)))
    # The mock cannot skip image decoding (it encodes with TF), so decode here.
    tfds_sources.build_imagenet100_index(
      str(tmp_path), skip_image_decoding=False
    )
    source = data.load_source(data_config('imagenet100', 20, dir=str(tmp_path)))
    assert source.num_classes == 100 and len(source.class_names) == 100
    assert (
      0 < len(source.train) < 300
    )  # ~10% of random labels are in the subset.
    assert source.train.labels.min() >= 0 and source.train.labels.max() < 100
    images, labels = source.train.get_batch(np.arange(len(source.train)))
  assert (
    images.shape == (len(source.train), 20, 20, 3) and images.dtype == np.uint8
  )


@pytest.mark.parametrize('name', ['cifar10', 'stl10'])
def test_unprepared_dataset_is_a_fast_data_error(tmp_path, name):
  start = time.time()
  with pytest.raises(data.DataError) as info:
    data.load_source(data_config(name, 32, dir=str(tmp_path)))
  message = str(info.value)
  assert (
    f'python tools/prepare_data.py --dataset={name} --data_dir={tmp_path}'
    in message
  )
  assert 'tensorflow-cpu' in message and '\n' not in message
  assert time.time() - start < 10
  assert not any(os.scandir(tmp_path))  # Nothing was downloaded or written.


def test_download_without_tensorflow_is_a_data_error(tmp_path):
  try:
    import tensorflow  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel

    pytest.skip('TensorFlow is installed: this would really try to download')
  except ImportError:
    pass
  with pytest.raises(data.DataError, match='pip install tensorflow-cpu'):
    data.load_source(
      data_config('cifar10', 32, dir=str(tmp_path), download=True)
    )


def test_prepare_data_tool_without_tensorflow(tmp_path):
  try:
    import tensorflow  # noqa: F401  # pylint: disable=unused-import,import-outside-toplevel

    pytest.skip('TensorFlow is installed: the tool would really try to prepare')
  except ImportError:
    pass
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'tools', 'prepare_data.py'),
      '--dataset=cifar10',
      f'--data_dir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'pip install tensorflow-cpu' in last
