"""A tiny WRN on scikit-learn's digits actually learns, labeled and unlabeled."""

import numpy as np

from tests.helpers import digits_accuracy, tiny_config, train_on_digits


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
  learner, state, source, history = train_on_digits(config)

  mean = lambda key, sl: float(np.mean([m[key] for m in history[sl]]))
  # Supervised loss: from ~log(10) to well below it.
  assert mean('loss_sup', slice(0, 10)) > 2.0
  assert mean('loss_sup', slice(-50, None)) < 0.4
  # Pseudo-labels: from chance (0.1) to mostly right, and many confident.
  assert mean('pseudo_label_acc', slice(0, 10)) < 0.3
  assert mean('pseudo_label_acc', slice(-50, None)) > 0.65
  assert mean('mask_ratio', slice(-50, None)) > 0.2
  assert history[-1]['num_centers'] == 10
  assert digits_accuracy(learner, state, source) > 0.6
