"""The same global batch on 1 and on 8 devices gives the same training run."""

import chex
import jax
import numpy as np
import pytest

from tests.helpers import (
  random_batch,
  random_views,
  run_on_devices,
  tiny_config,
)

K = 4


@pytest.mark.parametrize(
  'make_batch',
  [random_views, random_batch],
  ids=['views', 'uint8_with_on_device_augmentation'],
)
def test_one_vs_eight_devices(make_batch):
  assert jax.local_device_count() == 8, 'conftest sets 8 simulated CPU devices'
  config = tiny_config('layermatch', **{'pseudo_label.threshold': 0.4})
  rng = np.random.default_rng(1)
  batches = [make_batch(rng, config, K) for _ in range(5)]
  state_1, hist_1 = run_on_devices(config, batches, 1, K)
  state_8, hist_8 = run_on_devices(config, batches, 8, K)

  # Something happened: confident samples, centres, falling or moving losses.
  assert hist_1[-1]['num_centers'] >= 2 and hist_1[-1]['mask_ratio'] > 0
  # Every step's metrics, and the trained state, to float32 summation order.
  chex.assert_trees_all_close(hist_8, hist_1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
    (
      state_8.params,
      state_8.batch_stats,
      state_8.ema_params,
      state_8.cluster.centers,
    ),
    (
      state_1.params,
      state_1.batch_stats,
      state_1.ema_params,
      state_1.cluster.centers,
    ),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_array_equal(state_8.cluster.counts, state_1.cluster.counts)
  assert int(state_8.step) == int(state_1.step) == 5
