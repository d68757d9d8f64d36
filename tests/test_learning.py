"""A tiny WRN on scikit-learn's digits actually learns, labeled and unlabeled."""

import jax
import numpy as np

from layermatch_jax import data
from layermatch_jax.learner import Learner
from tests.helpers import tiny_config


def test_layermatch_learns_digits_from_50_labels():
  config = tiny_config(
    'layermatch',
    **{
      'data.name': 'digits',
      'data.num_labels': 50,
      'batch_size': 16,
      'uratio': 4,
      'num_train_steps': 300,
    },
  )
  source = data.load_source(config.data)
  split = data.make_split(source, config.data.num_labels, config.seed)
  batches = data.make_train_iterator(source, split, config, num_devices=1)
  learner = Learner(
    config,
    source.num_classes,
    source.image_shape,
    devices=jax.local_devices()[:1],
  )
  state = learner.init_state()
  history = []
  for _ in range(config.num_train_steps):
    state, metrics = learner.step(state, next(batches), sharded=True)
    history.append(metrics)

  mean = lambda key, sl: float(np.mean([m[key] for m in history[sl]]))
  # Supervised loss: from ~log(10) to well below it.
  assert mean('loss_sup', slice(0, 10)) > 2.0
  assert mean('loss_sup', slice(-50, None)) < 0.4
  # Pseudo-labels: from chance (0.1) to mostly right, and many confident.
  assert mean('pseudo_label_acc', slice(0, 10)) < 0.3
  assert mean('pseudo_label_acc', slice(-50, None)) > 0.65
  assert mean('mask_ratio', slice(-50, None)) > 0.2
  assert history[-1]['num_centers'] == 10
  test_images = np.stack(
    [source.test[i]['image'] for i in range(len(source.test))]
  )
  assert learner.accuracy(state, test_images, source.test.labels) > 0.6
