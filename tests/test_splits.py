"""Labeled splits: class balance, seeding, file round trip and refusal of wrong files."""

import json

import ml_collections
import numpy as np
import pytest

from configs import default
from layermatch_jax import data
from layermatch_jax.data import splits

COUNTS = (10, 12, 8, 20)  # Train images per class; class 2 is the smallest.


def fake_source(name='fake', counts=COUNTS, seed=0):
  labels = np.random.default_rng(seed).permutation(
    np.repeat(np.arange(len(counts)), counts)
  )
  images = np.zeros((len(labels), 2, 2, 3), np.uint8)
  return data.Source(
    name=name,
    num_classes=len(counts),
    class_names=tuple('abcd'[: len(counts)]),
    image_shape=(2, 2, 3),
    train=data.ArrayRecords(images, labels),
    test=data.ArrayRecords(images[:4], labels[:4]),
    extra_unlabeled=data.ArrayRecords(images[:0], labels[:0]),
  )


def config_for(num_labels, seed=0, split_file=None):
  config = default.get_config()
  config.seed = seed
  config.data.num_labels = num_labels
  config.data.split_file = split_file
  return config


def test_same_seed_same_indices_and_different_seed_differs():
  source = fake_source()
  a = splits.make_split(source, 16, seed=3)
  b = splits.make_split(source, 16, seed=3)
  c = splits.make_split(source, 16, seed=4)
  np.testing.assert_array_equal(a.labeled_indices, b.labeled_indices)
  assert not np.array_equal(a.labeled_indices, c.labeled_indices)


@pytest.mark.parametrize('num_labels', [4, 16, 32])
def test_exactly_balanced(num_labels):
  source = fake_source()
  split = splits.make_split(source, num_labels, seed=0)
  idx = split.labeled_indices
  assert len(idx) == len(np.unique(idx)) == num_labels == split.num_labels
  np.testing.assert_array_equal(
    np.bincount(source.train.labels[idx], minlength=4), [num_labels // 4] * 4
  )
  assert split.dataset == 'fake' and split.pool_size == sum(COUNTS)


def test_all_labels_is_the_whole_pool_whatever_the_class_counts():
  source = fake_source()  # Classes of 10, 12, 8 and 20 images.
  split = splits.make_split(source, 'all', seed=0)
  np.testing.assert_array_equal(split.labeled_indices, np.arange(sum(COUNTS)))
  assert split.num_labels == sum(COUNTS)
  np.testing.assert_array_equal(
    np.bincount(source.train.labels[split.labeled_indices]), COUNTS
  )


@pytest.mark.parametrize('bad', [0, -4, None, 'some', 2.5, True])
def test_num_labels_must_be_positive_or_all(bad):
  with pytest.raises(
    data.DataError, match=r"not valid: use a positive multiple .* or 'all'"
  ):
    splits.make_split(fake_source(), bad, seed=0)


def test_all_labels_with_a_split_file_must_label_everything(tmp_path):
  source = fake_source()
  path = str(tmp_path / 'split.json')
  data.save_split(path, splits.make_split(source, 'all', seed=0))
  assert data.get_split(
    source, config_for('all', split_file=path)
  ).num_labels == sum(COUNTS)
  data.save_split(path, splits.make_split(source, 8, seed=0))
  with pytest.raises(
    data.DataError, match="has 8 labels but data.num_labels='all' asks for 50"
  ):
    data.get_split(source, config_for('all', split_file=path))


def test_not_divisible_names_the_numbers():
  with pytest.raises(data.DataError, match=r'num_labels=10 .*4 classes'):
    splits.make_split(fake_source(), 10, seed=0)


def test_too_many_per_class_names_the_numbers():
  with pytest.raises(data.DataError) as info:
    splits.make_split(
      fake_source(), 36, seed=0
    )  # 9 per class, class 'c' has 8.
  message = str(info.value)
  assert 'num_labels=36' in message and '9 labels per class' in message
  assert 'only 8' in message and 'at most 32' in message
  assert '\n' not in message


def test_file_round_trip(tmp_path):
  source = fake_source()
  split = splits.make_split(source, 16, seed=7)
  path = data.split_path(str(tmp_path / 'work'))
  assert path.endswith('splits/split.json')
  data.save_split(path, split)
  record = json.loads(open(path).read())
  for key in (
    'dataset',
    'num_classes',
    'pool_size',
    'num_labels',
    'seed',
    'fingerprint',
    'labeled_indices',
  ):
    assert key in record
  loaded = data.load_split(path, source)
  np.testing.assert_array_equal(loaded.labeled_indices, split.labeled_indices)
  assert (
    loaded.dataset,
    loaded.seed,
    loaded.num_labels,
    loaded.fingerprint,
  ) == ('fake', 7, 16, split.fingerprint)


def test_get_split_reloads_the_file_whatever_the_seed(tmp_path):
  source = fake_source()
  path = str(tmp_path / 'split.json')
  data.save_split(path, splits.make_split(source, 8, seed=1))
  got = data.get_split(source, config_for(8, seed=99, split_file=path))
  np.testing.assert_array_equal(
    got.labeled_indices, splits.make_split(source, 8, seed=1).labeled_indices
  )
  with pytest.raises(
    data.DataError, match='has 8 labels but data.num_labels=16 asks for 16'
  ):
    data.get_split(source, config_for(16, split_file=path))


def test_split_of_another_dataset_is_refused(tmp_path):
  path = str(tmp_path / 'split.json')
  data.save_split(path, splits.make_split(fake_source(), 8, seed=0))
  with pytest.raises(data.DataError, match='was made for dataset fake'):
    data.load_split(path, fake_source(name='other'))
  # Same name, other labels (e.g. another folder): the fingerprint differs.
  with pytest.raises(data.DataError, match='fingerprint'):
    data.load_split(path, fake_source(seed=1))


def test_missing_or_corrupt_split_file(tmp_path):
  source = fake_source()
  with pytest.raises(data.DataError, match='does not exist'):
    data.load_split(str(tmp_path / 'nope.json'), source)
  bad = tmp_path / 'bad.json'
  bad.write_text('{"dataset": "fake"')
  with pytest.raises(data.DataError, match='not a valid split file'):
    data.load_split(str(bad), source)
  record = json.loads(
    json.dumps(
      {
        'dataset': 'fake',
        'num_classes': 4,
        'pool_size': 50,
        'num_labels': 2,
        'seed': 0,
        'fingerprint': splits.fingerprint(source),
        'labeled_indices': [1, 999],
      }
    )
  )
  bad.write_text(json.dumps(record))
  with pytest.raises(data.DataError, match='corrupt'):
    data.load_split(str(bad), source)


def test_config_dict_without_split_file_key():
  # Configs built elsewhere may lack optional keys: defaults apply.
  config = ml_collections.ConfigDict({'seed': 0, 'data': {'num_labels': 4}})
  assert data.get_split(fake_source(), config).num_labels == 4
