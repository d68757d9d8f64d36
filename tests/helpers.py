"""Shared test fixtures: tiny configs and batches."""

import jax
import numpy as np

from configs import default
from layermatch_jax.learner import Learner


def tiny_config(algorithm='layermatch', **overrides):
  """A WRN-10-1 on 8x8 images: fast enough for many steps on a CPU."""
  config = default.get_config()
  config.algorithm = algorithm
  config.model.name = 'wrn10_1'
  # BN running statistics with momentum 0.999 still weigh their initial values
  # by 0.74 after 300 steps; short runs need a faster average.
  config.model.bn_momentum = 0.99
  config.num_train_steps = 1000
  config.batch_size = 8
  config.uratio = 2
  config.data.image_size = 8
  config.data.mean = (0.5, 0.5, 0.5)
  config.data.std = (0.25, 0.25, 0.25)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def random_batch(
  rng: np.random.Generator, config, num_classes, size=8, channels=3
):
  b = config.batch_size
  u = b * config.uratio
  return dict(
    labeled_image=rng.integers(
      0, 256, (b, size, size, channels), dtype=np.uint8
    ),
    labeled_label=rng.integers(0, num_classes, (b,)).astype(np.int32),
    unlabeled_image=rng.integers(
      0, 256, (u, size, size, channels), dtype=np.uint8
    ),
    unlabeled_label=rng.integers(0, num_classes, (u,)).astype(np.int32),
  )


def random_views(
  rng: np.random.Generator,
  config,
  num_classes,
  size=8,
  channels=3,
  pool_size=None,
):
  """Ready views; with `pool_size`, also idx_u (pool indices, repeats allowed) for FlexMatch."""
  b = config.batch_size
  u = b * config.uratio
  f = lambda n: rng.normal(size=(n, size, size, channels)).astype(np.float32)
  views = dict(
    x_l=f(b),
    y_l=rng.integers(0, num_classes, (b,)).astype(np.int32),
    x_w=f(u),
    x_s=f(u),
    y_u=rng.integers(0, num_classes, (u,)).astype(np.int32),
  )
  if pool_size is not None:
    views['idx_u'] = rng.integers(0, pool_size, (u,)).astype(np.int32)
  return views


def run_on_devices(
  config,
  batches,
  num_devices,
  num_classes=4,
  pool_size=None,
  grad_norms_by_term=True,
):
  """Trains on `batches` with the first `num_devices` local devices.

  Returns the host state and each step's metrics: the 1-vs-8-device tests run
  this twice on the same global batches.
  """
  learner = Learner(
    config,
    num_classes,
    (8, 8, 3),
    devices=jax.local_devices()[:num_devices],
    unlabeled_pool_size=pool_size,
  )
  state = learner.init_state()
  history = []
  for batch in batches:
    state, metrics = learner.step(
      state, batch, grad_norms_by_term=grad_norms_by_term
    )
    history.append(metrics)
  return learner.host(state), history


def train_on_digits(config):
  """`config.num_train_steps` steps on the digits on one device.

  Returns (learner, state, source, per-step metrics): the learning tests'
  common loop (the split drawn from config.seed, batches as the pipeline makes).
  """
  from layermatch_jax import data  # pylint: disable=g-import-not-at-top

  source = data.load_source(config.data)
  split = data.make_split(source, config.data.num_labels, config.seed)
  batches = data.make_train_iterator(source, split, config, num_devices=1)
  learner = Learner(
    config,
    source.num_classes,
    source.image_shape,
    devices=jax.local_devices()[:1],
    unlabeled_pool_size=data.unlabeled_pool_size(source),
  )
  state = learner.init_state()
  history = []
  for _ in range(config.num_train_steps):
    state, metrics = learner.step(state, next(batches), sharded=True)
    history.append(metrics)
  return learner, state, source, history


def digits_accuracy(learner, state, source) -> float:
  """Top-1 of the EMA parameters on the source's whole test set."""
  images = np.stack([source.test[i]['image'] for i in range(len(source.test))])
  return learner.accuracy(state, images, source.test.labels)
