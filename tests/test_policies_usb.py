"""The pseudo-label policies against USB's hooks, step by step.

Each `USB*` class below is an independent numpy port of one of USB's hooks
(microsoft/Semi-supervised-learning: semilearn/algorithms/flexmatch/utils.py,
freematch/utils.py and freematch.py's entropy_loss, softmatch/utils.py and
hooks/dist_align.py), written from USB's formulas and update order on one GPU,
not from this project's code. The project's policies must give the same masks
(weights), pseudo-labels and states over many steps.
"""

from collections import Counter

import jax.numpy as jnp
import numpy as np
import pytest

from layermatch_jax.algorithms import policies
from layermatch_jax.algorithms.policies import PolicyConfig, PolicyInputs

NUM_CLASSES, POOL, BATCH, STEPS = 4, 40, 12, 40


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _batches(seed=0):
  """Weak-view logits that grow sharper over the steps (confidence rises past the
  thresholds, as in training), distinct pool indices per batch, strong-view
  logits and labeled-batch logits; float32 probabilities for both sides."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(STEPS):
    scale = 0.5 + 6.0 * t / STEPS
    bias = np.array(
      [0.8, 0.0, -0.3, 0.2]
    )  # Uneven classes: per-class statistics matter.
    probs_w = _softmax(
      rng.normal(size=(BATCH, NUM_CLASSES)) * scale + bias
    ).astype(np.float32)
    probs_s = _softmax(rng.normal(size=(BATCH, NUM_CLASSES)) * scale).astype(
      np.float32
    )
    probs_l = _softmax(
      rng.normal(size=(BATCH // 2, NUM_CLASSES)) * scale
    ).astype(np.float32)
    idx = rng.permutation(POOL)[:BATCH].astype(np.int32)
    out.append((probs_w, probs_s, probs_l, idx))
  return out


def _select(state, pc, probs_w, probs_l=None, idx=None):
  return policies.select(
    state,
    PolicyInputs(
      jnp.asarray(probs_w),
      None if probs_l is None else jnp.asarray(probs_l),
      None if idx is None else jnp.asarray(idx),
    ),
    pc,
  )


# --- Ports of USB's hooks (one GPU, hard labels).


class USBFlexMatch:
  """FlexMatchThresholdingHook: mask from classwise_acc, then record, then update."""

  def __init__(self, pool, num_classes, p_cutoff, thresh_warmup=True):
    self.pool, self.num_classes, self.p_cutoff = pool, num_classes, p_cutoff
    self.thresh_warmup = thresh_warmup
    self.selected_label = -np.ones(pool, np.int64)
    self.classwise_acc = np.zeros(num_classes)

  def update(self):
    counter = Counter(self.selected_label.tolist())
    if max(counter.values()) < self.pool:
      if self.thresh_warmup:
        denom = max(counter.values())
      else:
        denom = max(v for k, v in counter.items() if k != -1)
      for i in range(self.num_classes):
        self.classwise_acc[i] = counter[i] / denom

  def masking(self, probs, idx):
    max_probs, max_idx = probs.max(-1), probs.argmax(-1)
    acc = self.classwise_acc[max_idx]
    mask = max_probs >= self.p_cutoff * (acc / (2.0 - acc))
    select = max_probs >= self.p_cutoff
    self.selected_label[idx[select]] = max_idx[select]
    self.update()
    return mask.astype(np.float64)


class USBFreeMatch:
  """FreeMatchThresholingHook (update, then mask) and freematch.entropy_loss."""

  def __init__(self, num_classes, m):
    self.m = m
    self.p_model = np.ones(num_classes) / num_classes
    self.label_hist = np.ones(num_classes) / num_classes
    self.time_p = self.p_model.mean()

  def masking(self, probs):
    max_probs, max_idx = probs.max(-1), probs.argmax(-1)
    self.time_p = self.time_p * self.m + (1 - self.m) * max_probs.mean()
    self.p_model = self.p_model * self.m + (1 - self.m) * probs.mean(0)
    hist = np.bincount(max_idx, minlength=len(self.p_model)).astype(np.float64)
    self.label_hist = (
      self.label_hist * self.m + (1 - self.m) * hist / hist.sum()
    )
    mod = self.p_model / self.p_model.max()
    return (max_probs >= self.time_p * mod[max_idx]).astype(np.float64)

  def entropy_loss(self, mask, probs_s):
    if mask.sum() == 0:
      return 0.0
    prob_s = probs_s[mask.astype(bool)]
    hist_s = np.bincount(prob_s.argmax(-1), minlength=probs_s.shape[1]).astype(
      np.float64
    )
    hist_s = hist_s / hist_s.sum()
    with np.errstate(divide='ignore'):
      scaler = 1.0 / self.label_hist
      scaler_s = 1.0 / hist_s
    scaler[np.isinf(scaler)] = 0.0  # replace_inf_to_zero
    scaler_s[np.isinf(scaler_s)] = 0.0
    mod_prob_model = self.p_model * scaler
    mod_prob_model = mod_prob_model / mod_prob_model.sum()
    mod_mean_prob_s = prob_s.mean(0) * scaler_s
    mod_mean_prob_s = mod_mean_prob_s / mod_mean_prob_s.sum()
    return float(np.sum(mod_prob_model * np.log(mod_mean_prob_s + 1e-12)))


class USBSoftMatch:
  """DistAlignEMAHook (p_model None until the first batch; 'uniform' or 'model'
  p_target), then SoftMatchWeightingHook on the aligned probabilities."""

  def __init__(self, num_classes, m, n_sigma, p_target_type='uniform'):
    self.m, self.n_sigma = m, n_sigma
    self.update_p_target = p_target_type == 'model'
    self.p_target = np.ones(num_classes) / num_classes
    self.p_model = None
    self.prob_max_mu_t = 1.0 / num_classes
    self.prob_max_var_t = 1.0

  def dist_align(self, probs, probs_lb):
    if self.p_model is None:
      self.p_model = probs.mean(0)
    else:
      self.p_model = self.p_model * self.m + probs.mean(0) * (1 - self.m)
    if self.update_p_target:
      self.p_target = self.p_target * self.m + probs_lb.mean(0) * (1 - self.m)
    aligned = probs * (self.p_target + 1e-6) / (self.p_model + 1e-6)
    return aligned / aligned.sum(-1, keepdims=True)

  def masking(self, aligned):
    max_probs = aligned.max(-1)
    self.prob_max_mu_t = (
      self.m * self.prob_max_mu_t + (1 - self.m) * max_probs.mean()
    )
    self.prob_max_var_t = self.m * self.prob_max_var_t + (
      1 - self.m
    ) * max_probs.var(ddof=1)
    below = np.minimum(max_probs - self.prob_max_mu_t, 0.0)
    return np.exp(-(below**2) / (2 * self.prob_max_var_t / self.n_sigma**2))


def _close(actual, expected, atol=1e-6):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64),
    np.asarray(expected, np.float64),
    rtol=1e-5,
    atol=atol,
  )


# --- Step-by-step regressions.


@pytest.mark.parametrize('warmup', [True, False])
def test_flexmatch_matches_usb_hook_over_many_steps(warmup):
  tau = 0.8
  pc = PolicyConfig('flexmatch', threshold=tau, flexmatch_warmup=warmup)
  usb = USBFlexMatch(POOL, NUM_CLASSES, tau, warmup)
  state = policies.init_state('flexmatch', NUM_CLASSES, POOL)
  passed, used = 0, []
  for t, (probs_w, _, _, idx) in enumerate(_batches()):
    sel = _select(state, pc, probs_w, idx=idx)
    mask = usb.masking(probs_w.astype(np.float64), idx)
    np.testing.assert_array_equal(
      sel.labels, probs_w.argmax(-1), err_msg=f'step {t}'
    )
    np.testing.assert_array_equal(sel.weights, mask, err_msg=f'step {t}')
    np.testing.assert_array_equal(
      sel.state['selected'], usb.selected_label, err_msg=f'step {t}'
    )
    # The thresholds the next step uses.
    acc = usb.classwise_acc
    _close(
      policies.flexmatch_thresholds(
        sel.state['selected'], NUM_CLASSES, tau, warmup
      ),
      tau * acc / (2 - acc),
    )
    state, passed = sel.state, passed + int(mask.sum())
    used.append(int(np.sum(usb.selected_label >= 0)))
  # Not a vacuous run: many samples passed, and the warm-up phase (part of the
  # pool unused) was crossed.
  assert passed > STEPS * BATCH // 4
  assert used[0] < POOL // 2 and any(0 < u < POOL for u in used), used


def test_freematch_matches_usb_hook_over_many_steps():
  lam = 0.9  # A fast EMA, so the thresholds move a lot within the test.
  pc = PolicyConfig('freematch', freematch_momentum=lam, fairness_weight=0.001)
  usb = USBFreeMatch(NUM_CLASSES, lam)
  state = policies.init_state('freematch', NUM_CLASSES)
  kept = []
  for t, (probs_w, probs_s, _, _) in enumerate(_batches(1)):
    sel = _select(state, pc, probs_w)
    mask = usb.masking(probs_w.astype(np.float64))
    np.testing.assert_array_equal(sel.weights, mask, err_msg=f'step {t}')
    _close(sel.state['tau'], usb.time_p)
    _close(sel.state['p_model'], usb.p_model)
    _close(sel.state['hist'], usb.label_hist)
    loss = policies.freematch_fairness(
      sel.state, jnp.asarray(probs_s), sel.weights
    )
    _close(loss, usb.entropy_loss(mask, probs_s.astype(np.float64)), atol=1e-5)
    state = sel.state
    kept.append(mask.mean())
  assert 0.1 < np.mean(kept) < 0.95  # Thresholds that select some, not all.


@pytest.mark.parametrize(
  'alignment,p_target_type', [('uniform', 'uniform'), ('labeled', 'model')]
)
def test_softmatch_matches_usb_hooks_over_many_steps(alignment, p_target_type):
  m = 0.9
  pc = PolicyConfig(
    'softmatch',
    softmatch_momentum=m,
    softmatch_n_sigma=2.0,
    softmatch_alignment=alignment,
  )
  usb = USBSoftMatch(NUM_CLASSES, m, n_sigma=2, p_target_type=p_target_type)
  state = policies.init_state('softmatch', NUM_CLASSES)
  for t, (probs_w, _, probs_l, _) in enumerate(_batches(2)):
    sel = _select(state, pc, probs_w, probs_l=probs_l)
    aligned = usb.dist_align(
      probs_w.astype(np.float64), probs_l.astype(np.float64)
    )
    mask = usb.masking(aligned)
    # Pseudo-labels from the un-aligned probabilities (USB's gen_ulb_targets on logits).
    np.testing.assert_array_equal(
      sel.labels, probs_w.argmax(-1), err_msg=f'step {t}'
    )
    _close(sel.weights, mask, atol=1e-5)
    _close(sel.state['p_model'], usb.p_model)
    _close(sel.state['p_target'], usb.p_target)
    _close(
      [sel.state['mu'], sel.state['var']],
      [usb.prob_max_mu_t, usb.prob_max_var_t],
    )
    state = sel.state


def test_fixmatch_matches_usb_fixed_threshold():
  for probs_w, _, _, _ in _batches(3):
    sel = _select({}, PolicyConfig('fixed', threshold=0.9), probs_w)
    # FixedThresholdingHook: mask = max_probs >= p_cutoff.
    np.testing.assert_array_equal(
      sel.weights, (probs_w.max(-1) >= 0.9).astype(np.float32)
    )
    np.testing.assert_array_equal(sel.labels, probs_w.argmax(-1))


def test_flexmatch_thresholds_come_from_before_this_batch():
  """A batch whose recording would raise the thresholds it is judged by.

  Pool of 10, 3 classes, tau = 0.9, recorded before: sigma = (3, 1, 0), unused
  = 6. With the warm-up beta = sigma / max(3, 6) = (1/2, 1/6, 0), M(beta) =
  beta / (2 - beta) = (1/3, 1/11, 0), thresholds T = (0.3, 0.0818, 0). The
  batch: pool 5 and 6 predicted class 1 at 0.92 and 0.95 (>= tau: recorded),
  pool 7 class 1 at 0.5, pool 8 class 0 at 0.4. Judged by T from before the
  batch (USB's hook and the paper's Algorithm 1): masks (1, 1, 1, 1). Had the
  batch been recorded first: sigma = (3, 3, 0), unused = 4, beta = (3/4, 3/4,
  0), M = (3/5, 3/5, 0), T = (0.54, 0.54, 0): masks (1, 1, 0, 0).
  """
  state = dict(
    selected=jnp.asarray([0, 0, 0, 1, -1, -1, -1, -1, -1, -1], jnp.int32)
  )
  probs = np.array(
    [
      [0.05, 0.92, 0.03],
      [0.03, 0.95, 0.02],
      [0.3, 0.5, 0.2],
      [0.4, 0.35, 0.25],
    ],
    np.float32,
  )
  idx = np.array([5, 6, 7, 8], np.int32)
  pc = PolicyConfig('flexmatch', threshold=0.9)
  _close(
    policies.flexmatch_thresholds(state['selected'], 3, 0.9),
    [0.3, 0.9 / 11, 0.0],
  )
  sel = _select(state, pc, probs, idx=idx)
  np.testing.assert_array_equal(sel.labels, [1, 1, 1, 0])
  np.testing.assert_array_equal(sel.weights, [1, 1, 1, 1])
  np.testing.assert_array_equal(
    sel.state['selected'], [0, 0, 0, 1, -1, 1, 1, -1, -1, -1]
  )
  after = policies.flexmatch_thresholds(sel.state['selected'], 3, 0.9)
  _close(after, [0.54, 0.54, 0.0])
  # The other order would have left the last two samples out.
  np.testing.assert_array_equal(
    probs.max(-1) >= np.asarray(after)[probs.argmax(-1)],
    [True, True, False, False],
  )
  # USB's hook agrees: it records after computing the mask.
  usb = USBFlexMatch(10, 3, 0.9)
  usb.selected_label[:4] = [0, 0, 0, 1]
  usb.update()
  np.testing.assert_array_equal(
    usb.masking(probs.astype(np.float64), idx), [1, 1, 1, 1]
  )
