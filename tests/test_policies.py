"""Pseudo-label policies: by-hand formulas, device invariance, learning on digits.

Expected numbers are worked out from each paper's formulas, written out in the
test (the formula in a comment, the numbers spelled out or computed from it).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layermatch_jax.algorithms import policies, presets
from layermatch_jax.algorithms.policies import PolicyConfig, PolicyInputs
from tests.helpers import (
  random_views,
  run_on_devices,
  tiny_config,
  train_on_digits,
)


def _select(state, probs, pc, **inputs):
  return policies.select(
    state, PolicyInputs(jnp.asarray(probs, jnp.float32), **inputs), pc
  )


def _close(actual, expected, atol=1e-6):
  np.testing.assert_allclose(
    np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=atol
  )


def _on_devices(num_devices, fn, state, *per_example):
  """fn(state, *arrays) under pmap on `num_devices` CPU devices, arrays split in order."""
  rep = jax.tree.map(lambda x: jnp.stack([x] * num_devices), state)
  split = [
    jnp.asarray(a).reshape(num_devices, -1, *np.shape(a)[1:])
    for a in per_example
  ]
  out = jax.pmap(
    fn, axis_name='batch', devices=jax.local_devices()[:num_devices]
  )(rep, *split)
  return out


# --- By hand, one policy at a time.


def test_fixed_threshold_by_hand():
  probs = [
    [0.96, 0.03, 0.01],
    [0.50, 0.30, 0.20],
    [0.02, 0.02, 0.96],
    [0.05, 0.95, 0.00],
  ]
  sel = _select(
    policies.init_state('fixed', 3),
    probs,
    PolicyConfig('fixed', threshold=0.95),
  )
  # y_hat = argmax p, m = [max p >= 0.95].
  np.testing.assert_array_equal(sel.labels, [0, 0, 2, 1])
  np.testing.assert_array_equal(sel.weights, [1, 0, 1, 1])
  assert sel.state == {}


FLEX_PROBS = np.array(
  [
    [
      0.85,
      0.10,
      0.05,
    ],  # pool 7: y 0, 0.85 < T(0) = 0.9: m 0; < tau: not recorded.
    [0.05, 0.92, 0.03],  # pool 8: y 1, m 1; >= tau: recorded 8 <- 1 ...
    [0.30, 0.25, 0.45],  # pool 4: y 2, m 1; not confident: 4 keeps its label 1.
    [0.95, 0.03, 0.02],  # pool 9: y 0, m 1; recorded 9 <- 0.
    [
      0.02,
      0.02,
      0.96,
    ],  # pool 8 again: y 2, m 1; ... and the last one wins: 8 <- 2.
    [0.40, 0.32, 0.28],  # pool 5: y 0, 0.40 < 0.9: m 0.
  ]
)
FLEX_IDX = np.array([7, 8, 4, 9, 8, 5], np.int32)


@pytest.mark.parametrize('num_devices', [None, 2])
def test_flexmatch_by_hand(num_devices):
  tau = 0.9
  pc = PolicyConfig('flexmatch', threshold=tau)
  state = dict(
    selected=jnp.asarray([0, 0, 0, 0, 1, 1, 2, -1, -1, -1], jnp.int32)
  )
  # sigma = (4, 2, 1), unused = 3; warm-up: beta = sigma / max(max sigma, unused) = (1, 1/2, 1/4);
  # M(x) = x / (2 - x) = (1, 1/3, 1/7); T = tau M(beta).
  expected_t = [0.9, 0.3, 0.9 / 7]
  _close(policies.flexmatch_thresholds(state['selected'], 3, tau), expected_t)
  if num_devices is None:
    sel = _select(state, FLEX_PROBS, pc, idx_u=jnp.asarray(FLEX_IDX))
    labels, weights, new = sel.labels, sel.weights, sel.state
  else:  # Two devices, 3 images each: the repeated index 8 spans both.
    fn = lambda s, p, i: policies.select(
      s, PolicyInputs(p, idx_u=i), pc, 'batch'
    )[:3]
    labels, weights, new = _on_devices(
      num_devices, fn, state, FLEX_PROBS.astype(np.float32), FLEX_IDX
    )
    np.testing.assert_array_equal(new['selected'][0], new['selected'][1])
    labels, weights, new = (
      np.ravel(labels),
      np.ravel(weights),
      jax.tree.map(lambda x: x[0], new),
    )
  np.testing.assert_array_equal(labels, [0, 1, 2, 0, 2, 0])
  np.testing.assert_array_equal(weights, [0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(
    new['selected'], [0, 0, 0, 0, 1, 1, 2, -1, 2, 0]
  )
  # Next step: sigma = (5, 2, 2), unused = 1: beta = (1, 2/5, 2/5), M = (1, 1/4, 1/4).
  _close(
    policies.flexmatch_thresholds(new['selected'], 3, tau), [0.9, 0.225, 0.225]
  )


def test_flexmatch_warmup_and_mapping_by_hand():
  start = jnp.full((5,), -1, jnp.int32)
  # Nothing recorded: beta = 0, every threshold 0 (all samples train at first).
  _close(policies.flexmatch_thresholds(start, 2, 0.8), [0.0, 0.0])
  _close(policies.flexmatch_thresholds(start, 2, 0.8, warmup=False), [0.0, 0.0])
  selected = jnp.asarray(
    [0, -1, -1, -1, -1], jnp.int32
  )  # sigma = (1, 0), unused = 4.
  # Warm-up: beta = 1 / max(1, 4) = 1/4, M = (1/4) / (7/4) = 1/7.
  _close(policies.flexmatch_thresholds(selected, 2, 0.8), [0.8 / 7, 0.0])
  # Without: beta = 1 / max sigma = 1, M = 1.
  _close(
    policies.flexmatch_thresholds(selected, 2, 0.8, warmup=False), [0.8, 0.0]
  )
  # Linear mapping M(x) = x: 0.8 / 4.
  _close(
    policies.flexmatch_thresholds(selected, 2, 0.8, mapping='linear'),
    [0.2, 0.0],
  )
  with pytest.raises(ValueError, match='unlabeled pool size'):
    policies.init_state('flexmatch', 3)
  with pytest.raises(ValueError, match=r"views\['idx_u'\]"):
    _select(
      policies.init_state('flexmatch', 3, 10),
      FLEX_PROBS,
      PolicyConfig('flexmatch'),
    )


FREE_PROBS = np.array(
  [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1]]
)
FREE_STRONG = np.array(
  [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]]
)


def test_freematch_thresholds_by_hand():
  lam = 0.9
  pc = PolicyConfig('freematch', freematch_momentum=lam, fairness_weight=0.01)
  state = policies.init_state('freematch', 3)
  _close(state['tau'], 1 / 3)  # tau_0 = p_0(c) = h_0(c) = 1/C.
  sel = _select(state, FREE_PROBS, pc)
  # tau_1 = lam / 3 + (1 - lam) mean_b max q_b = 0.3 + 0.1 (0.7 + 0.8 + 0.34 + 0.6) / 4
  _close(sel.state['tau'], 0.361)
  # p_1 = lam / 3 + (1 - lam) mean_b q_b = 0.3 + 0.1 (1.74, 1.63, 0.63) / 4
  _close(sel.state['p_model'], [0.3435, 0.34075, 0.31575])
  # h_1 = lam / 3 + (1 - lam) Hist(argmax q_b) = 0.3 + 0.1 (3, 1, 0) / 4
  _close(sel.state['hist'], [0.375, 0.325, 0.3])
  # tau_1(c) = tau_1 p_1(c) / max p_1 = (0.361, 0.358110, 0.331836); sample 2 (class 0,
  # 0.34 < 0.361) is left out.
  np.testing.assert_array_equal(sel.labels, [0, 1, 0, 0])
  np.testing.assert_array_equal(sel.weights, [1, 1, 0, 1])
  _close(sel.metrics['policy/threshold_min'], 0.361 * 0.31575 / 0.3435)

  # Fairness over the selected samples 0, 1, 3 of the strong view:
  # p_bar = (1.0, 1.2, 0.8) / 3, h_bar = Hist(0, 1, 2) = (1, 1, 1) / 3,
  # q = SumNorm(p_bar / h_bar) = (1.0, 1.2, 0.8) / 3,
  # t = SumNorm(p_1 / h_1) = SumNorm(0.916, 1.048462, 1.0525) = (0.303617, 0.347522, 0.348861),
  # L_f = -H(t, q) = sum_c t_c log q_c.
  t = np.array([0.3435 / 0.375, 0.34075 / 0.325, 0.31575 / 0.3])
  t = t / t.sum()
  expected = np.sum(t * np.log(np.array([1.0, 1.2, 0.8]) / 3))
  np.testing.assert_allclose(expected, -1.1130975, rtol=1e-6)
  loss = policies.freematch_fairness(
    sel.state, jnp.asarray(FREE_STRONG, jnp.float32), sel.weights
  )
  _close(loss, expected)
  # Nothing selected: L_f = 0, and a zero (not NaN) gradient.
  fairness_unselected = lambda q: policies.freematch_fairness(
    sel.state, q, jnp.zeros(4)
  )
  loss, grad = jax.value_and_grad(fairness_unselected)(
    jnp.asarray(FREE_STRONG, jnp.float32)
  )
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grad, np.zeros((4, 3)))
  # A class no selected sample predicts gets 1 / h_bar = 0 (and log(0 + 1e-12)), as USB.
  weights = jnp.asarray([1.0, 1.0, 0.0, 0.0])
  # p_bar / h_bar = ((0.8, 1.0, 0.2) / 2) / ((1, 1, 0) / 2) -> (0.8, 1.0, 0): q = (4/9, 5/9, 0).
  expected = t[0] * np.log(4 / 9) + t[1] * np.log(5 / 9) + t[2] * np.log(1e-12)
  _close(
    policies.freematch_fairness(
      sel.state, jnp.asarray(FREE_STRONG, jnp.float32), weights
    ),
    expected,
    atol=1e-5,
  )
  # A class whose EMA histogram underflowed to 0 (never predicted for ~90k steps)
  # gets target 0, as USB's replace_inf_to_zero(1 / label_hist), not inf -> NaN.
  starved = dict(sel.state, hist=jnp.asarray([0.6, 0.4, 0.0], jnp.float32))
  t0 = np.array([0.3435 / 0.6, 0.34075 / 0.4, 0.0])
  t0 = t0 / t0.sum()
  _close(
    policies.freematch_fairness(
      starved, jnp.asarray(FREE_STRONG, jnp.float32), sel.weights
    ),
    np.sum(t0 * np.log(np.array([1.0, 1.2, 0.8]) / 3)),
  )


SOFT_PROBS = np.array(
  [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1]]
)


def _softmatch_reference(
  probs, m, mu0, var0, p_model0, p_target, n_sigma, align=True
):
  """SoftMatch eqs. 8 and 12 with the EMA updates, written out in numpy (USB's
  eps = 1e-6 in the alignment)."""
  p_model = m * p_model0 + (1 - m) * probs.mean(0)
  aligned = probs * (p_target + 1e-6) / (p_model + 1e-6) if align else probs
  aligned = aligned / aligned.sum(1, keepdims=True)
  c = aligned.max(1)
  mu = m * mu0 + (1 - m) * c.mean()
  var = m * var0 + (1 - m) * c.var(ddof=1)  # Unbiased: N / (N - 1).
  w = np.exp(-(np.minimum(c - mu, 0) ** 2) / (2 * var / n_sigma**2))
  return w, mu, var, p_model


def test_softmatch_by_hand():
  m = 0.9
  state = dict(
    mu=jnp.float32(0.6),
    var=jnp.float32(0.04),
    p_model=jnp.asarray([0.5, 0.3, 0.2]),
    p_target=jnp.full((3,), 1 / 3),
  )
  # The paper's Gaussian as written (n_sigma = 1).
  pc = PolicyConfig('softmatch', softmatch_momentum=m, softmatch_n_sigma=1.0)
  sel = _select(state, SOFT_PROBS, pc)
  # p_model = 0.9 (0.5, 0.3, 0.2) + 0.1 (0.45, 0.4125, 0.1375) = (0.495, 0.31125, 0.19375);
  # UA(p) = SumNorm(p u / p_model): max UA = (0.549642, 0.781613, 0.400361, 0.450250);
  # mu = 0.9 0.6 + 0.1 mean = 0.59454665; var = 0.9 0.04 + 0.1 var_unbiased = 0.03886349;
  # lambda = exp(-(min(c - mu, 0))^2 / (2 var)).
  w, mu, var, p_model = _softmatch_reference(
    SOFT_PROBS, m, 0.6, 0.04, np.array([0.5, 0.3, 0.2]), 1 / 3, n_sigma=1
  )
  _close(p_model, [0.495, 0.31125, 0.19375])
  _close([mu, var], [0.59454665, 0.03886349])
  _close(w, [0.974391, 1.0, 0.615613, 0.765000], atol=1e-5)
  _close(sel.weights, w)
  _close(sel.state['mu'], mu)
  _close(sel.state['var'], var)
  _close(sel.state['p_model'], p_model)
  _close(sel.state['p_target'], [1 / 3] * 3)
  # Hard labels from the un-aligned probabilities (USB).
  np.testing.assert_array_equal(sel.labels, [0, 1, 0, 0])

  # USB's Gaussian (n_sigma = 2), without alignment.
  pc = PolicyConfig(
    'softmatch',
    softmatch_momentum=m,
    softmatch_n_sigma=2.0,
    softmatch_alignment='none',
  )
  sel = _select(state, SOFT_PROBS, pc)
  w, mu, var, _ = _softmatch_reference(
    SOFT_PROBS,
    m,
    0.6,
    0.04,
    np.array([0.5, 0.3, 0.2]),
    1 / 3,
    n_sigma=2,
    align=False,
  )
  _close(sel.weights, w)
  _close([sel.state['mu'], sel.state['var']], [mu, var])

  # Target = EMA of the labeled batch's mean probabilities (USB's dist_uniform=False).
  probs_l = np.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]])
  pc = PolicyConfig(
    'softmatch',
    softmatch_momentum=m,
    softmatch_n_sigma=1.0,
    softmatch_alignment='labeled',
  )
  sel = _select(
    state, SOFT_PROBS, pc, probs_l=jnp.asarray(probs_l, jnp.float32)
  )
  p_target = 0.9 / 3 + 0.1 * probs_l.mean(0)  # (0.35, 0.335, 0.315)
  _close(sel.state['p_target'], [0.35, 0.335, 0.315])
  w, *_ = _softmatch_reference(
    SOFT_PROBS, m, 0.6, 0.04, np.array([0.5, 0.3, 0.2]), p_target, 1
  )
  _close(sel.weights, w)

  # Initial state: mu_0 = 1/C, sigma_0^2 = 1, uniform p_target, and p_model empty
  # until the first batch sets it to that batch's mean (USB's p_model = None).
  init = policies.init_state('softmatch', 3)
  _close([init['mu'], init['var']], [1 / 3, 1.0])
  _close(init['p_target'], [1 / 3] * 3)
  _close(init['p_model'], [0.0] * 3)
  sel = _select(
    init, SOFT_PROBS, PolicyConfig('softmatch', softmatch_momentum=m)
  )
  _close(
    sel.state['p_model'], SOFT_PROBS.mean(0)
  )  # (0.45, 0.4125, 0.1375), not an EMA step.
  w, mu, var, _ = _softmatch_reference(
    SOFT_PROBS, 0.0, 1 / 3, 1.0, np.zeros(3), 1 / 3, 2
  )
  mu, var = (
    m / 3 + (1 - m) * mu,
    m + (1 - m) * var,
  )  # mu, var: EMA steps from (1/C, 1).
  _close([sel.state['mu'], sel.state['var']], [mu, var])


def test_config_presets_and_step_config():
  from layermatch_jax.train_step import StepConfig, TERMS

  for name in ('flexmatch', 'freematch', 'softmatch'):
    config = tiny_config(name)
    assert presets.resolve_policy(config) == name
    assert presets.resolve(config)['head_grad_scale'] == 1.0
  config = tiny_config('layermatch', **{'pseudo_label.policy': 'softmatch'})
  assert presets.resolve_policy(config) == 'softmatch'
  assert presets.resolve(config) == dict(
    unsup_weight=1.0,
    head_grad_scale=0.0,
    cluster_weight=1.0,
    head_bias_grad_scale=0.0,
    head_grad_rule='static',
  )
  assert (
    presets.resolve(tiny_config('layermatch_adaptive'))['head_grad_rule']
    == 'consensus'
  )
  assert presets.resolve_policy(tiny_config('fixmatch')) == 'fixed'
  with pytest.raises(
    ValueError, match=r"pseudo_label.policy='mixmatch' is not one of"
  ):
    presets.resolve_policy(
      tiny_config('fixmatch', **{'pseudo_label.policy': 'mixmatch'})
    )
  sc = StepConfig.from_config(tiny_config('freematch'), 4)
  # USB's classic-CV values (fairness weight 0.001, n_sigma 2), and the fairness
  # term only where FreeMatch's state exists.
  assert sc.pseudo_label == PolicyConfig(
    'freematch', 0.95, True, 'convex', 0.999, 0.001, 0.999, 2.0, 'uniform'
  )
  assert sc.terms == TERMS + ('fairness',)
  assert StepConfig.from_config(tiny_config('layermatch'), 4).terms == TERMS
  sc = StepConfig.from_config(tiny_config('softmatch'), 4)
  assert sc.pseudo_label.fairness_weight == 0.0 and sc.terms == TERMS


# --- The same global batch on 1 and on 8 devices.


@pytest.mark.parametrize('policy', ['flexmatch', 'freematch', 'softmatch'])
def test_policy_state_one_vs_eight_devices(policy):
  # LayerMatch on top, a low tau (FlexMatch records something) and a large w_f
  # (a wrong share of the fairness gradient per device would show; its own
  # gradient norm is logged with grad_norms_by_term).
  config = tiny_config(
    'layermatch',
    **{
      'pseudo_label.policy': policy,
      'pseudo_label.threshold': 0.3,
      'pseudo_label.freematch.fairness_weight': 1.0,
    },
  )
  pool = 24  # 16 unlabeled images a step: repeated indices, within and across devices.
  rng = np.random.default_rng(3)
  batches = [random_views(rng, config, 4, pool_size=pool) for _ in range(3)]
  by_term = policy == 'freematch'
  state_1, hist_1 = run_on_devices(config, batches, 1, 4, pool, by_term)
  state_8, hist_8 = run_on_devices(config, batches, 8, 4, pool, by_term)

  # The policy state to 1e-5 (FlexMatch's record exactly).
  chex.assert_trees_all_close(
    state_8.policy, state_1.policy, rtol=1e-5, atol=1e-6
  )
  if policy == 'flexmatch':
    np.testing.assert_array_equal(
      state_8.policy['selected'], state_1.policy['selected']
    )
  # The first step sees identical inputs: every metric (losses, gradient norms)
  # to 1e-4. Later ones more loosely: on these near-uniform predictions of a
  # random network the step itself (any policy, 'fixed' included) drifts apart
  # by ~1e-4 in two steps, float summation order amplified (argmax and mask
  # near-ties); test_device_invariance covers the step's parameters.
  for step, (m1, m8) in enumerate(zip(hist_1, hist_8)):
    chex.assert_trees_all_close(
      m8, m1, rtol=1e-4 if step == 0 else 2e-3, atol=1e-6 if step == 0 else 1e-5
    )
  # The state moved away from its start.
  start = policies.init_state(policy, 4, pool)
  moved = [
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(state_1.policy), jax.tree.leaves(start))
  ]
  assert any(moved), state_1.policy
  if policy == 'freematch':
    assert abs(hist_1[-1]['loss_fairness']) > 0
    # Its gradient reaches the backbone with the same size on 1 and 8 devices
    # (compared above with the other first-step metrics).
    assert hist_1[0]['grad_norm/backbone/fairness'] > 0.1


# --- End to end: each policy, with and without LayerMatch's parts, learns digits.


@pytest.mark.parametrize(
  'algorithm,policy',
  [
    ('flexmatch', 'flexmatch'),
    ('layermatch', 'flexmatch'),
    ('freematch', 'freematch'),
    ('layermatch', 'freematch'),
    ('softmatch', 'softmatch'),
    ('layermatch', 'softmatch'),
  ],
)
def test_policy_learns_digits(algorithm, policy):
  steps = 120
  config = tiny_config(
    algorithm,
    **{
      'pseudo_label.policy': policy,
      'data.name': 'digits',
      'data.num_labels': 50,
      'batch_size': 16,
      'uratio': 4,
      'num_train_steps': steps,
      # RandAugment's compile is test_learning's business; flip, crop and Cutout stay.
      'augment.num_ops': 0,
      # EMAs short enough for FreeMatch's and SoftMatch's statistics to act in 120 steps.
      'pseudo_label.freematch.ema_momentum': 0.99,
      'pseudo_label.softmatch.ema_momentum': 0.99,
    },
  )
  learner, _, _, history = train_on_digits(config)
  assert learner.step_config.use_clustering == (algorithm == 'layermatch')

  mean = lambda key, sl: float(np.mean([m[key] for m in history[sl]]))
  # Pseudo-labels from chance (0.1) to mostly right, and they train.
  assert mean('pseudo_label_acc', slice(0, 10)) < 0.3
  assert mean('pseudo_label_acc', slice(-30, None)) > 0.55
  assert mean('mask_ratio', slice(-30, None)) > 0.5
  assert mean('loss_unsup', slice(-30, None)) > 0.01
  last = history[-1]
  if (
    policy == 'flexmatch'
  ):  # Confident predictions recorded; thresholds above 0.
    assert last['policy/pool_used'] > 0.1 and last['policy/threshold_mean'] > 0
  elif policy == 'freematch':  # tau_t rose from 1/C with the confidence.
    assert last['policy/threshold'] > 0.2
    assert 'loss_fairness' in last
  else:  # mu_t rose from 1/C; samples below it weigh less than 1.
    assert last['policy/mu'] > 0.2
    assert min(m['mask_ratio'] for m in history) < 0.999
  if algorithm == 'layermatch':
    assert last['num_centers'] == 10
