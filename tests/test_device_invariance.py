"""The same global batch on 1 and on 8 devices gives the same training run."""

import jax
import numpy as np
import pytest

from tests.helpers import random_batch, random_views, run_on_devices, tiny_config

K = 4


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize('make_batch', [random_views, random_batch],
                         ids=['views', 'uint8_with_on_device_augmentation'])
def test_one_vs_eight_devices(make_batch):
  assert jax.local_device_count() == 8, 'conftest sets 8 simulated CPU devices'
  config = tiny_config('layermatch', **{'pseudo_label.threshold': 0.4})
  rng = np.random.default_rng(1)
  batches = [make_batch(rng, config, K) for _ in range(5)]
  state_1, hist_1 = run_on_devices(config, batches, 1, K)
  state_8, hist_8 = run_on_devices(config, batches, 8, K)

  # Something happened: confident samples, centres, falling or moving losses.
  assert hist_1[-1]['num_centers'] >= 2 and hist_1[-1]['mask_ratio'] > 0
  for m1, m8 in zip(hist_1, hist_8):
    assert m1.keys() == m8.keys()
    for key in m1:
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  _assert_close(state_8.params, state_1.params)
  _assert_close(state_8.batch_stats, state_1.batch_stats)
  _assert_close(state_8.ema_params, state_1.ema_params)
  _assert_close(state_8.cluster.centers, state_1.cluster.centers)
  np.testing.assert_array_equal(state_8.cluster.counts, state_1.cluster.counts)
  assert int(state_8.step) == int(state_1.step) == 5
