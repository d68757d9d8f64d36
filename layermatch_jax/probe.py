"""Layer-wise probe: how good are the backbone's features, apart from the head?

LayerMatch's claim is about layers: pseudo-labels help the feature extractor and
hurt the linear head. For one train state this module measures the two apart,
on un-augmented images with the EMA parameters and the BatchNorm running
statistics (exactly what evaluation uses):

  head_top1           the trained head on the test set (= the loop's eval top1)
  probe_top1          a linear classifier fit on the frozen features of all
                      training images with their true labels: what the
                      features allow a linear head to reach (an upper bound)
  probe_labeled_top1  the same classifier fit on the run's labeled split only:
                      what a head trained on the labels alone could reach
  knn_top1            k nearest neighbours (cosine, k = 20) among all training
                      images' features, majority vote
  centre_top1         nearest Avg-Clustering centre (cosine), where the state
                      has centres (runs with layermatch.cluster_weight > 0)
  head_probe_gap      probe_top1 - head_top1: what the head, not the features, costs

With the run's labeled split, also how the head fits the two kinds of training
data (train images, un-augmented, EMA parameters; in training the pseudo-labels
come from weak views and the live parameters, so these approximate them):

  head_labeled_top1 / head_labeled_loss      on the labeled images (true labels)
  head_unlabeled_top1 / head_unlabeled_loss  on the other train images: how
                      right the head's pseudo-labels are
  head_unlabeled_confident_share / _top1     of those, the share with max
                      softmax >= pseudo_label.threshold, and their accuracy
  head_unlabeled_top1_per_class              [K] per true class (a list; the
                      worst class is head_unlabeled_worst_class_top1)

The linear classifier is scikit-learn's multinomial logistic regression
(L-BFGS, deterministic) on features standardised with the fitting set's mean
and std, with a fixed C = 1 (sklearn's default): nothing is chosen on the test
set. `probe_state` returns the numbers as a flat dict of JSON-ready values.
"""

from typing import Dict, Optional, Tuple
import warnings

import numpy as np

from layermatch_jax import evaluation

KNN_K = 20
PROBE_C = 1.0  # Inverse L2 strength of the probe (sklearn's default; never tuned on test).
PROBE_MAX_ITER = 1000


def extract(
  learner,
  state,
  records,
  indices=None,
  batch_size: int = 512,
  use_ema: bool = True,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(features [N, D], logits [N, K], labels [N]) of `records` (a data Source split).

  `indices` picks images (default: all). Un-augmented, evaluation-mode forward
  pass; the last batch is padded to a multiple of the device count.
  """
  sc = learner.step_config
  fn = learner.pmapped_fn(
    ('features', use_ema),
    lambda st, x: evaluation.features_and_logits(
      st, x, sc.mean, sc.std, use_ema=use_ema
    ),
    donate_state=False,
  )
  indices = (
    np.arange(len(records))
    if indices is None
    else np.asarray(indices, np.int64)
  )
  d = learner.num_devices
  batch_size = max(d, batch_size - batch_size % d)
  feats, logits, labels = [], [], []
  for start in range(0, len(indices), batch_size):
    images, y = records.get_batch(indices[start : start + batch_size])
    n = len(images)
    pad = (-n) % d
    if pad:
      images = np.concatenate(
        [images, np.zeros((pad, *images.shape[1:]), images.dtype)]
      )
    z, out = fn(state, images.reshape(d, -1, *images.shape[1:]))
    feats.append(np.asarray(z).reshape(-1, z.shape[-1])[:n])
    logits.append(np.asarray(out).reshape(-1, out.shape[-1])[:n])
    labels.append(np.asarray(y))
  return (
    np.concatenate(feats).astype(np.float32),
    np.concatenate(logits).astype(np.float32),
    np.concatenate(labels).astype(np.int64),
  )


class LinearProbe:
  """Multinomial logistic regression on standardised features (scikit-learn)."""

  def __init__(self, c: float = PROBE_C, max_iter: int = PROBE_MAX_ITER):
    self.c, self.max_iter = c, max_iter
    self.converged = None

  def fit(self, features, labels) -> 'LinearProbe':
    from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

    features = np.asarray(features, np.float64)
    self.mean = features.mean(0)
    # A dead feature (constant over the set) would divide by zero.
    self.scale = np.where(features.std(0) > 1e-8, features.std(0), 1.0)
    self.model = LogisticRegression(C=self.c, max_iter=self.max_iter)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always', ConvergenceWarning)
      self.model.fit((features - self.mean) / self.scale, labels)
    self.converged = not any(
      issubclass(w.category, ConvergenceWarning) for w in caught
    )
    return self

  def predict(self, features) -> np.ndarray:
    x = (np.asarray(features, np.float64) - self.mean) / self.scale
    return self.model.predict(x)


def _unit(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(
  bank, bank_labels, queries, num_classes: int, k: int = KNN_K, chunk: int = 256
) -> np.ndarray:
  """k-NN by cosine similarity: the most frequent class among the k nearest bank
  features; a tie goes to the class with the larger summed similarity."""
  bank, queries = (
    _unit(np.asarray(bank, np.float32)),
    _unit(np.asarray(queries, np.float32)),
  )
  k = min(k, len(bank))
  preds = []
  for start in range(0, len(queries), chunk):
    sims = queries[start : start + chunk] @ bank.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1)
    onehot = np.eye(num_classes, dtype=np.float32)[
      bank_labels[top]
    ]  # [n, k, C]
    votes = onehot.sum(1)
    sim_sums = np.einsum('nkc,nk->nc', onehot, top_sims)
    # sim_sums lies in [-k, k]: scaled below 0.5 it only breaks ties in votes.
    preds.append(np.argmax(votes + sim_sums / (2 * k + 1), axis=1))
  return np.concatenate(preds)


def nearest_centre(features, centres, counts) -> Optional[np.ndarray]:
  """Class of the nearest updated centre by cosine; None when no centre exists."""
  valid = np.asarray(counts) > 0
  if not valid.any():
    return None
  sims = (
    _unit(np.asarray(features, np.float32))
    @ _unit(np.asarray(centres, np.float32)).T
  )
  return np.argmax(np.where(valid[None, :], sims, -np.inf), axis=1)


def _accuracy(pred, labels) -> float:
  return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def _cross_entropy(logits, labels) -> float:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
  return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def head_fit(
  logits, labels, is_labeled, num_classes: int, threshold: float
) -> dict:
  """The head on labeled vs unlabeled training images (see the module doc)."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  is_labeled = np.asarray(is_labeled, bool)
  pred = logits.argmax(1)
  out = dict(
    head_labeled_top1=_accuracy(pred[is_labeled], labels[is_labeled]),
    head_labeled_loss=_cross_entropy(logits[is_labeled], labels[is_labeled]),
    num_unlabeled_train=int((~is_labeled).sum()),
  )
  rest = ~is_labeled
  if not rest.any():  # Every train image labeled: no pseudo-labels to judge.
    return out
  correct = pred[rest] == labels[rest]
  shifted = logits[rest] - logits[rest].max(1, keepdims=True)
  confidence = 1.0 / np.exp(shifted).sum(1)  # max softmax
  confident = confidence >= threshold
  per_class = [
    float(correct[labels[rest] == c].mean())
    if (labels[rest] == c).any()
    else None
    for c in range(num_classes)
  ]
  present = [a for a in per_class if a is not None]
  out.update(
    head_unlabeled_top1=float(correct.mean()),
    head_unlabeled_loss=_cross_entropy(logits[rest], labels[rest]),
    head_unlabeled_confident_share=float(confident.mean()),
    head_unlabeled_confident_top1=float(correct[confident].mean())
    if confident.any()
    else None,
    head_unlabeled_top1_per_class=per_class,
    head_unlabeled_worst_class_top1=min(present),
  )
  return out


def probe_state(
  learner,
  state,
  source,
  labeled_indices=None,
  k: int = KNN_K,
  max_train: Optional[int] = None,
) -> Dict[str, object]:
  """The probe's numbers for a (replicated) train state; see the module doc.

  `labeled_indices` (the run's split, into source.train) enables
  probe_labeled_top1. `max_train` caps the training images used (a fixed,
  seeded subset) for datasets too large to embed whole; None uses all.
  """
  train_idx = np.flatnonzero(np.asarray(source.train.labels) >= 0)
  if max_train is not None and max_train < len(train_idx):
    train_idx = np.sort(
      np.random.default_rng(0).choice(train_idx, max_train, replace=False)
    )
  z_train, logits_train, y_train = extract(
    learner, state, source.train, train_idx
  )
  z_test, logits_test, y_test = extract(learner, state, source.test)
  num_classes = source.num_classes

  probe = LinearProbe().fit(z_train, y_train)
  result = dict(
    num_train=int(len(y_train)),
    num_test=int(len(y_test)),
    feature_dim=int(z_train.shape[1]),
    head_top1=_accuracy(logits_test.argmax(1), y_test),
    head_train_top1=_accuracy(logits_train.argmax(1), y_train),
    probe_top1=_accuracy(probe.predict(z_test), y_test),
    probe_train_top1=_accuracy(probe.predict(z_train), y_train),
    probe_converged=bool(probe.converged),
    knn_top1=_accuracy(
      knn_predict(z_train, y_train, z_test, num_classes, k), y_test
    ),
    knn_k=int(k),
  )
  result['head_probe_gap'] = result['probe_top1'] - result['head_top1']

  result.update(
    num_labeled=None, probe_labeled_top1=None, head_labeled_probe_gap=None
  )
  if labeled_indices is not None and len(labeled_indices):
    labeled_idx = np.asarray(labeled_indices, np.int64)
    pos = np.minimum(
      np.searchsorted(train_idx, labeled_idx), len(train_idx) - 1
    )
    if np.array_equal(
      train_idx[pos], labeled_idx
    ):  # Embedded already (train_idx is sorted).
      z_lab, y_lab = z_train[pos], y_train[pos]
    else:
      z_lab, _, y_lab = extract(learner, state, source.train, labeled_idx)
    labeled = LinearProbe().fit(z_lab, y_lab)
    result.update(
      num_labeled=int(len(labeled_idx)),
      probe_labeled_top1=_accuracy(labeled.predict(z_test), y_test),
    )
    result['head_labeled_probe_gap'] = (
      result['probe_labeled_top1'] - result['head_top1']
    )
    result.update(
      head_fit(
        logits_train,
        y_train,
        np.isin(train_idx, labeled_idx),
        num_classes,
        learner.config.pseudo_label.threshold,
      )
    )

  cluster = learner.host(state.cluster)
  pred = nearest_centre(z_test, cluster.centers, cluster.counts)
  result.update(
    num_centres=int(np.sum(np.asarray(cluster.counts) > 0)),
    centre_top1=None if pred is None else _accuracy(pred, y_test),
  )
  return result
