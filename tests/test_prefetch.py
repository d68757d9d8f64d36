"""Device prefetch: the same batches, on the devices, and an input position that
a resume can continue from without skipping the buffered batches."""

import jax
import numpy as np
import pytest

from layermatch_jax import data, parallel, prefetch
from tests import test_pipeline as tp


def _iterator(num_devices=8):
  source, config = tp.fake_source(), tp.make_config(batch_size=16, uratio=3)
  split = data.make_split(source, 10, seed=0)
  return data.make_train_iterator(
    source, split, config, num_devices=num_devices
  )


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


@pytest.mark.parametrize('size', [0, 1, 2, 3])
def test_same_batches_in_the_same_order(size):
  plain = _iterator()
  wrapped = prefetch.DevicePrefetch(_iterator(), size)
  for _ in range(5):
    _assert_batches_equal(next(wrapped), next(plain))


def test_batches_are_on_the_devices_one_row_per_device():
  devices = jax.local_devices()
  batch = next(prefetch.DevicePrefetch(_iterator(), 2, devices))
  image = batch['unlabeled_image']
  assert isinstance(image, jax.Array)
  assert image.shape == (8, 6, 4, 4, 3)
  shards = sorted(image.addressable_shards, key=lambda s: s.device.id)
  assert [s.device for s in shards] == devices
  for i, s in enumerate(shards):  # Row i is device i's part, not a copy.
    np.testing.assert_array_equal(s.data[0], np.asarray(image[i]))


def test_a_subset_of_devices():
  devices = jax.local_devices()[5:7]
  batch = next(prefetch.DevicePrefetch(_iterator(num_devices=2), 2, devices))
  assert {s.device for s in batch['labeled_image'].addressable_shards} == set(
    devices
  )


@pytest.mark.parametrize('size', [0, 2, 3])
def test_state_is_after_the_last_batch_taken_not_the_buffer(size):
  """Saved after k batches, a resume starts with batch k + 1: none of the
  batches still in the buffer is skipped."""
  plain = _iterator()
  wrapped = prefetch.DevicePrefetch(_iterator(), size)
  assert wrapped.get_state() == plain.get_state()  # Before any batch.
  for _ in range(4):
    next(plain), next(wrapped)
  assert wrapped.get_state() == plain.get_state()
  expected = next(plain)

  resumed = prefetch.DevicePrefetch(_iterator(), size)
  next(resumed)  # Fill its buffer first: set_state must drop it.
  resumed.set_state(wrapped.get_state())
  assert resumed.get_state() == wrapped.get_state()
  _assert_batches_equal(next(resumed), expected)


def test_pmapped_step_takes_prefetched_batches():
  """The step gives the same numbers for a prefetched and a host batch."""
  fn = parallel.pmap(
    lambda s, b: (s + 1, jax.lax.psum(b['labeled_label'].sum(), 'batch'))
  )
  host = next(_iterator())
  on_device = next(prefetch.DevicePrefetch(_iterator(), 2))
  state = parallel.replicate(np.zeros((), np.int32))
  state, from_host = fn(state, host)
  state, from_device = fn(state, on_device)
  np.testing.assert_array_equal(from_host, from_device)
  assert int(from_host[0]) == int(host['labeled_label'].sum())


@pytest.mark.parametrize('size', [-1, 1.5, True])
def test_bad_size(size):
  with pytest.raises(ValueError, match='prefetch size .* is not valid'):
    prefetch.DevicePrefetch(_iterator(), size)


def test_put_sharded_refuses_a_wrong_device_count():
  with pytest.raises(ValueError, match='does not match 8 local devices'):
    parallel.put_sharded({'x': np.zeros((4, 2))})


def test_training_is_the_same_with_and_without_prefetch(tmp_path):
  """The trainer's run (2 devices) ends in the same state, and its checkpoint
  holds the same input position, whether batches are prefetched or not."""
  from tests import cli

  args = (
    '--config.num_train_steps=5',
    '--config.checkpoint_every_steps=5',
    '--config.eval_every_steps=5',
  )
  runs = {}
  for size in (0, 3):
    workdir = tmp_path / f'prefetch{size}'
    result = cli.run(workdir, *args, f'--config.data.device_prefetch={size}')
    assert result.returncode == 0, result.stderr[-2000:]
    runs[size] = cli.saved_state(workdir)
  (state0, data0, step0), (state3, data3, step3) = runs[0], runs[3]
  assert step0 == step3 == 5
  assert data0['iterator'] == data3['iterator']
  leaves = zip(jax.tree.leaves(state0), jax.tree.leaves(state3))
  for a, b in leaves:
    np.testing.assert_array_equal(a, b)
