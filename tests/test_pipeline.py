"""Input pipeline: shapes, sampling, multi-process sharding, eval coverage, state."""

import json
from unittest import mock

import numpy as np
import pytest

from configs import default
from layermatch_jax import data
from layermatch_jax.data import pipeline

NUM_CLASSES, PER_CLASS, NUM_EXTRA, NUM_TEST = 5, 10, 13, 23
TRAIN, EXTRA, TEST = 0, 1, 2


def _coded_images(n, part):
  """4x4 images whose first pixel spells (index % 256, index // 256, part)."""
  images = np.zeros((n, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 0, 1] = np.arange(n) // 256
  images[:, 0, 0, 2] = part
  return images


def decode(images):
  """-> (index, part) arrays from _coded_images pixels."""
  px = images[..., 0, 0, :].astype(np.int64)
  return px[..., 0] + 256 * px[..., 1], px[..., 2]


def fake_source(lazy=False):
  train_labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
  test_labels = np.arange(NUM_TEST) % NUM_CLASSES

  def records(images, labels):
    if not lazy:
      return data.ArrayRecords(images, labels)
    return data.LazyRecords(
      lambda i: images[i], list(range(len(images))), labels, (4, 4, 3)
    )

  return data.Source(
    name='fake',
    num_classes=NUM_CLASSES,
    class_names=tuple('abcde'),
    image_shape=(4, 4, 3),
    train=records(_coded_images(len(train_labels), TRAIN), train_labels),
    test=records(_coded_images(NUM_TEST, TEST), test_labels),
    extra_unlabeled=records(
      _coded_images(NUM_EXTRA, EXTRA), np.full(NUM_EXTRA, -1, np.int32)
    ),
  )


def make_config(batch_size=8, uratio=3, seed=0, eval_batch_size=8):
  config = default.get_config()
  config.seed, config.batch_size, config.uratio = seed, batch_size, uratio
  config.eval_batch_size = eval_batch_size
  config.data.num_labels = 10
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize('num_devices', [8, 1])
def test_shapes_and_dtypes(num_devices):
  source, config = fake_source(), make_config(batch_size=16, uratio=3)
  split = data.make_split(source, 10, seed=0)
  batch = next(
    data.make_train_iterator(source, split, config, num_devices=num_devices)
  )
  b = 16 // num_devices
  expect = {
    'labeled_image': ((num_devices, b, 4, 4, 3), np.uint8),
    'labeled_label': ((num_devices, b), np.int32),
    'labeled_index': ((num_devices, b), np.int32),
    'unlabeled_image': ((num_devices, 3 * b, 4, 4, 3), np.uint8),
    'unlabeled_label': ((num_devices, 3 * b), np.int32),
    'unlabeled_index': ((num_devices, 3 * b), np.int32),
  }
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expect


@pytest.mark.parametrize('lazy', [False, True])
def test_batches_hold_the_right_images_and_labels(lazy):
  source, config = fake_source(lazy), make_config()
  split = data.make_split(source, 10, seed=0)
  allowed = set(split.labeled_indices.tolist())
  for batch in take(
    data.make_train_iterator(source, split, config, num_devices=2), 20
  ):
    index, part = decode(batch['labeled_image'])
    assert (part == TRAIN).all() and set(index.ravel().tolist()) <= allowed
    np.testing.assert_array_equal(index, batch['labeled_index'])
    np.testing.assert_array_equal(
      batch['labeled_label'], source.train.labels[index]
    )
    index, part = decode(batch['unlabeled_image'])
    pool = np.where(part == TRAIN, index, index + len(source.train))
    np.testing.assert_array_equal(pool, batch['unlabeled_index'])
    expect = np.where(
      part == TRAIN, source.train.labels[np.minimum(index, 49)], -1
    )
    np.testing.assert_array_equal(batch['unlabeled_label'], expect)


def _stream(batches, key):
  return np.concatenate([b[key].reshape(-1) for b in batches])


def test_epochs_are_permutations_and_reshuffled():
  source, config = fake_source(), make_config(batch_size=4, uratio=3)
  split = data.make_split(source, 10, seed=0)
  batches = take(
    data.make_train_iterator(source, split, config, num_devices=1), 20
  )
  pool = data.unlabeled_pool_size(source)  # 63; 20 steps x 12 = 240 items.
  unlabeled = _stream(batches, 'unlabeled_index')
  first, second = unlabeled[:pool], unlabeled[pool : 2 * pool]
  np.testing.assert_array_equal(np.sort(first), np.arange(pool))
  np.testing.assert_array_equal(np.sort(second), np.arange(pool))
  assert not np.array_equal(first, second)
  labeled = _stream(batches, 'labeled_index')  # 80 items = 8 epochs of 10.
  for e in range(8):
    np.testing.assert_array_equal(
      np.sort(labeled[10 * e : 10 * e + 10]), split.labeled_indices
    )
  other = take(
    data.make_train_iterator(
      source, split, make_config(4, 3, seed=1), num_devices=1
    ),
    20,
  )
  assert not np.array_equal(_stream(other, 'unlabeled_index'), unlabeled)


def test_one_and_two_processes_see_the_same_global_batches():
  source, config = fake_source(), make_config(batch_size=8, uratio=3)
  split = data.make_split(source, 10, seed=0)
  single = take(
    data.make_train_iterator(source, split, config, num_devices=4), 12
  )
  per_process = [
    take(
      data.make_train_iterator(
        source, split, config, num_devices=2, process_index=p, process_count=2
      ),
      12,
    )
    for p in range(2)
  ]
  for step, batch in enumerate(single):
    for key, value in batch.items():
      # Process p holds global devices [2p, 2p + 2): exactly the same examples.
      joined = np.concatenate([per_process[p][step][key] for p in range(2)])
      np.testing.assert_array_equal(joined, value)
    g, pool = 24, data.unlabeled_pool_size(source)
    if (
      step * g // pool == ((step + 1) * g - 1) // pool
    ):  # Batch within one epoch:
      halves = [
        set(per_process[p][step]['unlabeled_index'].ravel().tolist())
        for p in range(2)
      ]
      assert not halves[0] & halves[1]  # the processes' parts are disjoint.


def test_state_restores_the_same_next_batches():
  source, config = fake_source(), make_config()
  split = data.make_split(source, 10, seed=0)
  it = data.make_train_iterator(source, split, config, num_devices=2)
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # Must survive JSON.
  expected = take(it, 4)
  restored = data.make_train_iterator(source, split, config, num_devices=2)
  restored.set_state(state)
  for a, b in zip(expected, take(restored, 4)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  it.set_state(state)  # Rewinding the same iterator works too.
  np.testing.assert_array_equal(
    next(it)['unlabeled_index'], expected[0]['unlabeled_index']
  )


@pytest.mark.parametrize(
  'num_devices,eval_batch_size', [(4, 8), (1, 5), (8, 64)]
)
def test_eval_covers_every_test_image_once(num_devices, eval_batch_size):
  source = fake_source()
  config = make_config(eval_batch_size=eval_batch_size)
  batches = list(
    data.make_eval_iterator(source, config, num_devices=num_devices)
  )
  assert len(batches) == -(-NUM_TEST // eval_batch_size)
  seen = []
  for batch in batches:
    b = eval_batch_size // num_devices
    assert batch['image'].shape == (num_devices, b, 4, 4, 3)
    assert batch['label'].dtype == np.int32 and batch['mask'].dtype == bool
    index, part = decode(batch['image'][batch['mask']])
    assert (part == TEST).all()
    np.testing.assert_array_equal(
      batch['label'][batch['mask']], source.test.labels[index]
    )
    seen.extend(index.tolist())
  assert sorted(seen) == list(range(NUM_TEST))


def test_bad_batch_sizes_name_the_numbers():
  source = fake_source()
  split = data.make_split(source, 10, seed=0)
  with pytest.raises(
    data.DataError,
    match=r'batch_size=12 .*8 device\(s\) x 2 process\(es\) = 16',
  ):
    data.make_train_iterator(
      source, split, make_config(batch_size=12), num_devices=8, process_count=2
    )


def test_eval_batch_size_not_a_device_multiple_is_padded():
  """eval_batch_size=10 on 4 devices: batches of 10 test images, padded to 12."""
  source = fake_source()
  batches = list(
    data.make_eval_iterator(
      source, make_config(eval_batch_size=10), num_devices=4
    )
  )
  assert len(batches) == -(-NUM_TEST // 10)
  for i, batch in enumerate(batches):
    assert batch['image'].shape[:2] == (4, 3) and batch['mask'].shape == (4, 3)
    real = min(10, NUM_TEST - 10 * i)
    np.testing.assert_array_equal(
      batch['mask'].reshape(-1), np.arange(12) < real
    )
  labels = np.concatenate(
    [b['label'].reshape(-1)[b['mask'].reshape(-1)] for b in batches]
  )
  np.testing.assert_array_equal(labels, np.asarray(source.test.labels))


def test_supervised_uratio_zero():
  source = fake_source()
  split = data.make_split(source, 10, seed=0)
  batch = next(
    data.make_train_iterator(
      source, split, make_config(uratio=0), num_devices=2
    )
  )
  assert batch['unlabeled_image'].shape == (2, 0, 4, 4, 3)


def test_digits_end_to_end():
  config = default.get_config()
  config.data.name, config.data.image_size, config.data.num_labels = (
    'digits',
    16,
    40,
  )
  config.batch_size, config.uratio, config.eval_batch_size = 64, 7, 256
  source = data.load_source(config.data)
  split = data.get_split(source, config)
  it = data.make_train_iterator(source, split, config, num_devices=8)
  batch = next(it)
  assert batch['labeled_image'].shape == (8, 8, 16, 16, 3)
  assert batch['unlabeled_image'].shape == (8, 56, 16, 16, 3)
  assert set(batch['labeled_index'].ravel().tolist()) <= set(
    split.labeled_indices.tolist()
  )
  # A clock that moves 2 s between the two readings: 5 batches of 8 x (8 + 56).
  ticks = iter([10.0, 12.0])
  with mock.patch.object(pipeline.time, 'perf_counter', lambda: next(ticks)):
    assert data.measure_throughput(it, 5) == 5 * 8 * (8 + 56) / 2.0
  total = sum(
    int(b['mask'].sum())
    for b in data.make_eval_iterator(source, config, num_devices=8)
  )
  assert total == len(source.test) == 360


def test_balanced_sampling_draws_every_class_equally_often():
  source, config = fake_source(), make_config(batch_size=4, uratio=1)
  # An uneven split: 1, 2, 3, 4 and 10 labeled images of classes a..e.
  labels = np.asarray(source.train.labels)
  chosen = np.concatenate(
    [np.flatnonzero(labels == c)[:n] for c, n in enumerate((1, 2, 3, 4, 10))]
  )
  split = data.Split(
    dataset='fake',
    num_classes=5,
    pool_size=len(labels),
    num_labels=len(chosen),
    seed=0,
    fingerprint='x',
    labeled_indices=np.sort(chosen),
  )
  uniform = _stream(
    take(data.make_train_iterator(source, split, config, num_devices=1), 50),
    'labeled_index',
  )
  config.data.labeled_sampling = 'balanced'
  balanced = _stream(
    take(data.make_train_iterator(source, split, config, num_devices=1), 50),
    'labeled_index',
  )  # 200 items = 4 epochs of 5 classes x 10.
  assert set(balanced) == set(chosen)
  for e in range(4):
    np.testing.assert_array_equal(
      np.bincount(labels[balanced[50 * e : 50 * e + 50]]), [10] * 5
    )
  # Uniform over images: class e (10 of the 20 images) is half the stream.
  np.testing.assert_array_equal(
    np.bincount(labels[uniform]), [10, 20, 30, 40, 100]
  )
  config.data.labeled_sampling = 'by_class'
  with pytest.raises(
    data.DataError, match="labeled_sampling='by_class' is not valid"
  ):
    data.make_train_iterator(source, split, config, num_devices=1)
