"""The layer-wise probe's parts (layermatch_jax/probe.py) on hand-made features.

The probe on a real checkpoint, through tools/probe.py, is in test_tools.py.
"""

import numpy as np

from layermatch_jax import probe


def test_knn_majority_vote_and_tie_break_by_similarity():
  # Bank on the unit circle: class 0 near angle 0, class 1 near angle pi/2.
  angles = np.array(
    [0.0, 0.1, -0.1, np.pi / 2, np.pi / 2 + 0.1, np.pi / 2 - 0.1]
  )
  bank = np.stack([np.cos(angles), np.sin(angles)], 1) * np.array(
    [[1], [2], [3], [1], [5], [1]]
  )
  labels = np.array([0, 0, 0, 1, 1, 1])
  queries = np.array(
    [[1.0, 0.6], [0.6, 1.0], [0.02, 3.0]]
  )  # 31, 59 and 90 degrees.
  # k = 3: the three nearest by cosine (lengths do not matter) are all of one class.
  np.testing.assert_array_equal(
    probe.knn_predict(bank, labels, queries, 2, k=3), [0, 1, 1]
  )
  # k = 6: every query gets 3 votes per class; the tie goes to the larger summed
  # cosine, i.e. the nearer cluster.
  np.testing.assert_array_equal(
    probe.knn_predict(bank, labels, queries, 2, k=6), [0, 1, 1]
  )
  # k = 4, query at 31 degrees: 3 votes for class 0 against 1.
  np.testing.assert_array_equal(
    probe.knn_predict(bank, labels, queries[:1], 2, k=4), [0]
  )
  # Chunking does not change the answer.
  many = np.random.default_rng(0).normal(size=(50, 2))
  np.testing.assert_array_equal(
    probe.knn_predict(bank, labels, many, 2, k=4, chunk=7),
    probe.knn_predict(bank, labels, many, 2, k=4, chunk=64),
  )
  # k larger than the bank is capped: k = 100 votes with the whole bank, as k = 6.
  np.testing.assert_array_equal(
    probe.knn_predict(bank, labels, queries, 2, k=100), [0, 1, 1]
  )


def test_nearest_centre_skips_centres_never_updated():
  centres = np.array([[1.0, 0.0], [0.0, 2.0], [0.7, 0.7]])
  features = np.array([[2.0, 0.1], [0.1, 1.0], [1.0, 0.9]])
  np.testing.assert_array_equal(
    probe.nearest_centre(features, centres, [1, 1, 1]), [0, 1, 2]
  )
  # Centre 2 was never updated (count 0): the third feature goes to the nearer of 0 and 1.
  np.testing.assert_array_equal(
    probe.nearest_centre(features, centres, [3, 5, 0]), [0, 1, 0]
  )
  assert probe.nearest_centre(features, centres, [0, 0, 0]) is None


def test_linear_probe_separates_separable_data_deterministically():
  rng = np.random.default_rng(0)
  means = rng.normal(size=(4, 16)) * 4
  labels = rng.integers(0, 4, 400)
  features = means[labels] + rng.normal(size=(400, 16))
  features[:, 3] = (
    7.0  # A dead (constant) feature must not break the standardisation.
  )
  a = probe.LinearProbe().fit(features[:300], labels[:300])
  b = probe.LinearProbe().fit(features[:300], labels[:300])
  assert a.converged
  np.testing.assert_array_equal(a.model.coef_, b.model.coef_)
  assert np.mean(a.predict(features[300:]) == labels[300:]) == 1.0
  # Standardisation: scaling a feature by 1000 leaves the predictions unchanged.
  scaled = features * np.r_[1000.0, np.ones(15)]
  c = probe.LinearProbe().fit(scaled[:300], labels[:300])
  np.testing.assert_array_equal(
    c.predict(scaled[300:]), a.predict(features[300:])
  )


def test_head_fit_on_labeled_and_unlabeled_train_images():
  # 6 images, 3 classes; images 0 and 3 are labeled.
  logits = np.log(
    np.array(
      [
        [0.90, 0.05, 0.05],  # class 0, labeled, right
        [0.97, 0.02, 0.01],  # class 0, right, confident
        [0.20, 0.70, 0.10],  # class 0, wrong
        [0.10, 0.80, 0.10],  # class 1, labeled, right
        [0.01, 0.98, 0.01],  # class 1, right, confident
        [0.01, 0.01, 0.98],
      ]
    )
  )  # class 2, right, confident
  labels = np.array([0, 0, 0, 1, 1, 2])
  labeled = np.array([True, False, False, True, False, False])
  out = probe.head_fit(logits, labels, labeled, 3, threshold=0.95)
  assert out['head_labeled_top1'] == 1.0 and out['num_unlabeled_train'] == 4
  np.testing.assert_allclose(
    out['head_labeled_loss'], -np.mean(np.log([0.90, 0.80]))
  )
  assert out['head_unlabeled_top1'] == 0.75
  np.testing.assert_allclose(
    out['head_unlabeled_loss'], -np.mean(np.log([0.97, 0.20, 0.98, 0.98]))
  )
  assert out['head_unlabeled_confident_share'] == 0.75
  assert out['head_unlabeled_confident_top1'] == 1.0
  assert out['head_unlabeled_top1_per_class'] == [0.5, 1.0, 1.0]
  assert out['head_unlabeled_worst_class_top1'] == 0.5
  # A class with no unlabeled image has no accuracy, and the worst ignores it.
  out = probe.head_fit(logits[:5], labels[:5], labeled[:5], 3, threshold=0.99)
  assert out['head_unlabeled_top1_per_class'] == [0.5, 1.0, None]
  assert out['head_unlabeled_confident_top1'] is None  # None at 0.99.
  # Every image labeled: nothing to say about pseudo-labels.
  assert 'head_unlabeled_top1' not in probe.head_fit(
    logits, labels, np.ones(6, bool), 3, 0.95
  )
