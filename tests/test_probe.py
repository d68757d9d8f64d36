"""The layer-wise probe's parts (layermatch_jax/probe.py) on hand-made features.

The probe on a real checkpoint, through tools/probe.py, is in test_tools.py.
"""

import numpy as np

from layermatch_jax import probe


def test_knn_majority_vote_and_tie_break_by_similarity():
  # Bank on the unit circle: class 0 near angle 0, class 1 near angle pi/2.
  angles = np.array([0.0, 0.1, -0.1, np.pi / 2, np.pi / 2 + 0.1, np.pi / 2 - 0.1])
  bank = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array([[1], [2], [3], [1], [5], [1]])
  labels = np.array([0, 0, 0, 1, 1, 1])
  queries = np.array([[1.0, 0.6], [0.6, 1.0], [0.02, 3.0]])  # 31, 59 and 90 degrees.
  # k = 3: the three nearest by cosine (lengths do not matter) are all of one class.
  np.testing.assert_array_equal(probe.knn_predict(bank, labels, queries, 2, k=3), [0, 1, 1])
  # k = 6: every query gets 3 votes per class; the tie goes to the larger summed
  # cosine, i.e. the nearer cluster.
  np.testing.assert_array_equal(probe.knn_predict(bank, labels, queries, 2, k=6), [0, 1, 1])
  # k = 4, query at 31 degrees: 3 votes for class 0 against 1.
  np.testing.assert_array_equal(probe.knn_predict(bank, labels, queries[:1], 2, k=4), [0])
  # k larger than the bank is capped; chunking does not change the answer.
  many = np.random.default_rng(0).normal(size=(50, 2))
  np.testing.assert_array_equal(probe.knn_predict(bank, labels, many, 2, k=4, chunk=7),
                                probe.knn_predict(bank, labels, many, 2, k=4, chunk=64))
  assert probe.knn_predict(bank, labels, queries, 2, k=100).shape == (3,)


def test_nearest_centre_skips_centres_never_updated():
  centres = np.array([[1.0, 0.0], [0.0, 2.0], [0.7, 0.7]])
  features = np.array([[2.0, 0.1], [0.1, 1.0], [1.0, 0.9]])
  np.testing.assert_array_equal(probe.nearest_centre(features, centres, [1, 1, 1]), [0, 1, 2])
  # Centre 2 was never updated (count 0): the third feature goes to the nearer of 0 and 1.
  np.testing.assert_array_equal(probe.nearest_centre(features, centres, [3, 5, 0]), [0, 1, 0])
  assert probe.nearest_centre(features, centres, [0, 0, 0]) is None


def test_linear_probe_separates_separable_data_deterministically():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 16)) * 4
  labels = rng.integers(0, 4, 400)
  features = means[labels] + rng.normal(size=(400, 16))
  features[:, 3] = 7.0  # A dead (constant) feature must not break the standardisation.
  a = probe.LinearProbe().fit(features[:300], labels[:300])
  b = probe.LinearProbe().fit(features[:300], labels[:300])
  assert a.converged
  np.testing.assert_array_equal(a.model.coef_, b.model.coef_)
  assert np.mean(a.predict(features[300:]) == labels[300:]) == 1.0
  # Standardisation: scaling a feature by 1000 leaves the predictions unchanged.
  scaled = features * np.r_[1000.0, np.ones(15)]
  c = probe.LinearProbe().fit(scaled[:300], labels[:300])
  np.testing.assert_array_equal(c.predict(scaled[300:]), a.predict(features[300:]))
