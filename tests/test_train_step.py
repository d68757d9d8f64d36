"""The LayerMatch step against separately computed gradients and formulas."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from layermatch_jax import models, optim
from layermatch_jax import train_step as ts
from layermatch_jax.algorithms import avg_clustering, policies, presets
from layermatch_jax.algorithms.policies import PolicyInputs
from layermatch_jax.state import ClusterState, create_train_state
from tests.helpers import random_views, tiny_config

K = 4  # classes


def _setup(algorithm='layermatch', threshold=0.4, seed=0, **overrides):
  config = tiny_config(
    algorithm, **{'pseudo_label.threshold': threshold}, **overrides
  )
  model = models.create_model(config.model, K, axis_name=ts.AXIS)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  state = create_train_state(
    model,
    tx,
    jax.random.key(seed),
    (8, 8, 3),
    K,
    policy=presets.resolve_policy(config),
  )
  rng = np.random.default_rng(seed)
  # Centres for classes 0-2 with various update counts; class 3 has none yet,
  # so the "left out of the softmax" path is exercised.
  feature_dim = state.cluster.centers.shape[1]
  centers = rng.normal(size=(K, feature_dim)).astype(np.float32)
  centers[3] = 0
  state = state.replace(
    cluster=ClusterState(
      jnp.asarray(centers), jnp.asarray([3, 1, 7, 0], jnp.int32)
    )
  )
  views = random_views(rng, config, K)
  sc = ts.StepConfig.from_config(config, K)
  return model, state, views, sc


def _on_one_device(fn, *args):
  """Runs fn with the step's collective axis bound (size 1), like pmap would."""
  batched = [jax.tree.map(lambda x: jnp.asarray(x)[None], a) for a in args]
  out = jax.vmap(fn, axis_name=ts.AXIS)(*batched)
  return jax.tree.map(lambda x: x[0], out)


def reference_losses(model, state, views, sc, weights_fn=None):
  """L_s, L_u, L_c written out independently of train_step.py, unmasked head.

  m_i = [max p_w,i >= threshold] (the fixed policy), or weights_fn(p_w, p_l)
  for another policy's weights; L_u and L_c weigh sample i by m_i as given.
  """

  def losses(params):
    x = jnp.concatenate([views['x_l'], views['x_w'], views['x_s']])
    z, _ = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      x,
      train=True,
      mutable=['batch_stats'],
      method=models.Classifier.features,
    )
    n = views['x_l'].shape[0]
    u = views['x_w'].shape[0]
    z_l, z_w, z_s = z[:n], z[n : n + u], z[n + u :]
    head = lambda p, f: f @ p['head']['kernel'] + p['head']['bias']
    log_softmax = jax.nn.log_softmax
    pick = lambda lp, y: jnp.take_along_axis(lp, y[:, None], 1)[:, 0]
    loss_s = -pick(log_softmax(head(params, z_l)), views['y_l']).mean()
    stopped = jax.lax.stop_gradient
    p_w = jax.nn.softmax(head(stopped(params), stopped(z_w)))
    y_hat = jnp.argmax(p_w, 1)
    if weights_fn is None:
      m = (p_w.max(1) >= sc.threshold).astype(jnp.float32)
    else:
      m = weights_fn(p_w, jax.nn.softmax(head(stopped(params), stopped(z_l))))
    loss_u = (m * -pick(log_softmax(head(params, z_s)), y_hat)).mean()
    valid = state.cluster.counts > 0
    c = state.cluster.centers / jnp.linalg.norm(
      state.cluster.centers, axis=1, keepdims=True
    ).clip(1e-6)
    zs = z_s / jnp.linalg.norm(z_s, axis=1, keepdims=True)
    sim = jnp.where(valid, zs @ c.T / sc.temperature, -jnp.inf)
    m_c = m * valid[y_hat]
    # where, not a product alone: the CE of a class without a centre is infinite.
    loss_c = jnp.where(
      m_c > 0, m_c * -pick(log_softmax(sim), y_hat), 0.0
    ).mean()
    return loss_s, loss_u, loss_c, (z_l, z_w, y_hat, m)

  return losses


def expected_centres(state, y_l, z_l, z_w, y_hat, m, momentum):
  """Avg-Clustering's EMA update written out: unit features, mean per class weighted
  by 1 (labeled) or m_i (weak views), a first update taking the mean itself."""
  normalize = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  feats = np.concatenate(
    [normalize(np.asarray(z_l)), normalize(np.asarray(z_w))]
  )
  labels = np.concatenate([y_l, np.asarray(y_hat)])
  weights = np.concatenate([np.ones(len(z_l)), np.asarray(m)])
  centres = np.asarray(state.cluster.centers).copy()
  counts = np.asarray(state.cluster.counts).copy()
  for k in range(len(counts)):
    w = weights * (labels == k)
    if w.sum() == 0:
      continue
    mean = (w[:, None] * feats).sum(0) / w.sum()
    centres[k] = (
      mean if counts[k] == 0 else momentum * centres[k] + (1 - momentum) * mean
    )
    counts[k] += 1
  return centres, counts


# The step against its written-out reference: float32 sums in another order.
_allclose = functools.partial(chex.assert_trees_all_close, atol=1e-6, rtol=1e-5)


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


# 0.25, not 0.5: at 0.5 the head's share alpha and the stopped share 1 - alpha
# are equal, so a rule that swapped them would pass.
@pytest.mark.parametrize('alpha', [0.0, 0.25, 1.0])
def test_grad_relu_matches_separate_gradients(alpha):
  model, state, views, sc = _setup(**{'layermatch.head_grad_scale': alpha})
  assert sc.unsup_weight == 1.0 and sc.cluster_weight == 1.0
  losses = reference_losses(model, state, views, sc)

  def reference(params):
    g_s = jax.grad(lambda p: losses(p)[0])(params)
    g_u = jax.grad(lambda p: losses(p)[1])(params)
    g_c = jax.grad(lambda p: losses(p)[2])(params)
    g_full = jax.grad(lambda p: sum(losses(p)[:3]))(params)
    return g_s, g_u, g_c, g_full, losses(params)[3][3]

  def ours(params):
    grads, _ = jax.grad(ts.total_loss, has_aux=True)(params, state, views, sc)
    return grads

  g_s, g_u, g_c, g_full, mask = _on_one_device(reference, state.params)
  grads = _on_one_device(ours, state.params)

  # The test is only meaningful if every term pushes something.
  assert 0 < float(mask.mean()) < 1
  assert _max_abs(g_u['head']) > 1e-3 and _max_abs(g_c['backbone']) > 1e-3

  _allclose(grads['backbone'], g_full['backbone'])
  expected_head = jax.tree.map(
    lambda s, u: s + alpha * u, g_s['head'], g_u['head']
  )
  _allclose(grads['head'], expected_head)
  if alpha == 0.0:
    _allclose(grads['head'], g_s['head'])
  if alpha == 1.0:
    _allclose(grads['head'], g_full['head'])
  # L_c never reaches the head, in the reference either.
  assert _max_abs(g_c['head']) == 0.0


def test_bias_only_and_weight_only_masks():
  model, state, views, sc = _setup(
    **{
      'layermatch.head_grad_scale': 1.0,
      'layermatch.head_bias_grad_scale': 0.0,
    }
  )
  assert sc.head_grad_scales == {'kernel': 1.0, 'bias': 0.0}
  losses = reference_losses(model, state, views, sc)
  g_s, g_u = _on_one_device(
    lambda p: (
      jax.grad(lambda q: losses(q)[0])(p),
      jax.grad(lambda q: losses(q)[1])(p),
    ),
    state.params,
  )
  grads = _on_one_device(
    lambda p: jax.grad(ts.total_loss, has_aux=True)(p, state, views, sc)[0],
    state.params,
  )
  _allclose(
    grads['head']['kernel'], g_s['head']['kernel'] + g_u['head']['kernel']
  )
  _allclose(grads['head']['bias'], g_s['head']['bias'])


def test_term_gradients_split_and_sum_to_total():
  model, state, views, sc = _setup()
  term_grads, terms = _on_one_device(
    lambda st: ts.term_gradients(st, views, sc)[:2], state
  )
  total = _on_one_device(
    lambda p: jax.grad(ts.total_loss, has_aux=True)(p, state, views, sc)[0],
    state.params,
  )
  assert set(term_grads) == {'sup', 'unsup', 'cluster'}
  for name in term_grads:
    assert set(term_grads[name]) == {'backbone', 'head'}
  # Grad-ReLU (alpha=0): neither pseudo-label term moves the head.
  assert _max_abs(term_grads['unsup']['head']) == 0.0
  assert _max_abs(term_grads['cluster']['head']) == 0.0
  assert _max_abs(term_grads['cluster']['backbone']) > 1e-3
  summed = jax.tree.map(lambda a, b, c: a + b + c, *term_grads.values())
  _allclose(summed, total)
  losses = reference_losses(model, state, views, sc)
  ref = _on_one_device(lambda p: losses(p)[:3], state.params)
  np.testing.assert_allclose(
    [terms['sup'], terms['unsup'], terms['cluster']], ref, rtol=1e-5
  )


def test_freematch_fairness_moves_the_backbone_but_not_a_grad_relu_head():
  """FreeMatch's fairness term comes from the strong view's W~ logits, like L_u."""
  overrides = {
    'pseudo_label.policy': 'freematch',
    'pseudo_label.freematch.fairness_weight': 1.0,
  }

  def fairness(alpha):
    _, state, views, sc = _setup(
      **overrides, **{'layermatch.head_grad_scale': alpha}
    )
    assert sc.terms == ts.TERMS + ('fairness',)
    grads, terms = _on_one_device(
      lambda st: ts.term_gradients(st, views, sc)[:2], state
    )
    return grads['fairness'], terms

  (fair_0, terms_0), (fair_1, terms_1) = fairness(0.0), fairness(1.0)
  assert abs(float(terms_0['fairness'])) > 1e-3
  # alpha = 0: not one bit of the fairness gradient reaches the head ...
  chex.assert_trees_all_equal(
    fair_0['head'], jax.tree.map(jnp.zeros_like, fair_0['head'])
  )
  # ... though the term does depend on it (alpha = 1 passes it), and the
  # backbone's share is the same either way.
  assert _max_abs(fair_1['head']) > 1e-4 and _max_abs(fair_0['backbone']) > 1e-4
  _allclose(fair_0['backbone'], fair_1['backbone'])
  chex.assert_trees_all_equal(terms_0, terms_1)


def test_softmatch_weights_enter_losses_and_centres_as_given():
  """SoftMatch's weights are soft: L_u, L_c and the centres use m_i in (0, 1) as is."""
  model, state, views, sc = _setup(**{'pseudo_label.policy': 'softmatch'})
  assert (
    sc.pseudo_label.name == 'softmatch'
    and sc.pseudo_label.softmatch_n_sigma == 2.0
  )
  # The policy's state placed so that the weights spread over (0, 1): the
  # Gaussian's mean mu at the weak views' upper-quartile confidence c, its
  # variance 4 Var(c), so below mu m = exp(-(c - mu)^2 / (2 Var(c))) (n_sigma 2).
  z_w = _on_one_device(
    lambda p: reference_losses(model, state, views, sc)(p)[3][1], state.params
  )
  head = state.params['head']
  confidence = np.asarray(
    jax.nn.softmax(z_w @ head['kernel'] + head['bias'])
  ).max(1)
  uniform = jnp.full((K,), 1 / K)
  state = state.replace(
    policy=dict(
      mu=jnp.float32(np.quantile(confidence, 0.75)),
      var=jnp.float32(4 * confidence.var()),
      p_model=uniform,
      p_target=uniform,
    )
  )
  weights_fn = lambda p_w, p_l: (
    policies.select(
      state.policy, PolicyInputs(p_w, p_l), sc.pseudo_label
    ).weights
  )
  losses = reference_losses(model, state, views, sc, weights_fn)
  ls, lu, lc, (z_l, z_w, y_hat, m) = _on_one_device(losses, state.params)
  m = np.asarray(m)
  assert np.sum((m > 0.05) & (m < 0.95)) >= 4 and m.max() == 1.0, m

  new_state, metrics = _on_one_device(
    lambda st: ts.train_step(st, views, sc), state
  )
  np.testing.assert_allclose(metrics['loss_sup'], ls, rtol=1e-5)
  # L_u = mean_i m_i CE_i, and L_c alike: a weight rounded to 0 or 1 would show.
  np.testing.assert_allclose(metrics['loss_unsup'], lu, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_cluster'], lc, rtol=1e-5)
  np.testing.assert_allclose(metrics['mask_ratio'], m.mean(), rtol=1e-5)
  centres, counts = expected_centres(
    state, views['y_l'], z_l, z_w, y_hat, m, sc.center_momentum
  )
  np.testing.assert_array_equal(new_state.cluster.counts, counts)
  # The weighted mean, also for a class whose weights sum below 1.
  np.testing.assert_allclose(
    new_state.cluster.centers, centres, rtol=1e-5, atol=1e-6
  )


def test_update_centers_follows_ema_formula_by_hand():
  beta = 0.9
  cluster = ClusterState(
    centers=jnp.asarray([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5]]),
    counts=jnp.asarray([0, 4, 2], jnp.int32),
  )
  # Class 0: first update (two samples), class 1: one labeled + one confident
  # unlabeled, class 2: absent (the weight-0 sample must not count).
  features = jnp.asarray(
    [[3.0, 4.0], [0.0, 2.0], [1.0, 1.0], [0.0, -5.0], [2.0, 2.0]]
  )
  labels = jnp.asarray([0, 0, 1, 1, 2])
  weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
  sums, counts = avg_clustering.class_feature_sums(features, labels, weights, 3)
  new = avg_clustering.update_centers(cluster, sums, counts, beta)

  mean0 = (np.array([0.6, 0.8]) + np.array([0.0, 1.0])) / 2
  mean1 = (np.array([1.0, 1.0]) / np.sqrt(2) + np.array([0.0, -1.0])) / 2
  expected = np.stack(
    [mean0, beta * np.array([1.0, 0.0]) + (1 - beta) * mean1, [0.5, 0.5]]
  )
  np.testing.assert_allclose(new.centers, expected, rtol=1e-6)
  np.testing.assert_array_equal(new.counts, [1, 5, 2])


def test_update_centers_takes_the_weighted_mean_of_soft_weights():
  cluster = ClusterState(jnp.zeros((2, 2)), jnp.zeros((2,), jnp.int32))
  # Class 0 is seen only through two samples of weight 0.25 each.
  features = jnp.asarray([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
  labels = jnp.asarray([0, 0, 1])
  weights = jnp.asarray([0.25, 0.25, 1.0])
  sums, counts = avg_clustering.class_feature_sums(features, labels, weights, 2)
  new = avg_clustering.update_centers(cluster, sums, counts, 0.9)
  # First updates take the mean: (0.25 (0.6, 0.8) + 0.25 (0, 1)) / 0.5 = (0.3, 0.9).
  np.testing.assert_allclose(new.centers, [[0.3, 0.9], [1.0, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(new.counts, [1, 1])


def test_cluster_loss_is_zero_until_two_centres_exist():
  feats = jnp.ones((4, 3))
  one = ClusterState(jnp.eye(2, 3), jnp.asarray([1, 0], jnp.int32))
  two = ClusterState(jnp.eye(2, 3), jnp.asarray([1, 1], jnp.int32))
  labels = jnp.zeros((4,), jnp.int32)
  mask = jnp.ones((4,))
  assert (
    float(avg_clustering.cluster_loss(feats, one, labels, mask, 0.1)) == 0.0
  )
  # Two centres, features equidistant: CE = log 2.
  np.testing.assert_allclose(
    avg_clustering.cluster_loss(feats, two, labels, mask, 0.1),
    np.log(2),
    rtol=1e-6,
  )


def test_step_updates_centres_by_ema_only_and_optimizer_never_sees_them():
  model, state, views, sc = _setup()
  losses = reference_losses(model, state, views, sc)
  z_l, z_w, y_hat, m = _on_one_device(lambda p: losses(p)[3], state.params)
  new_state, metrics = _on_one_device(
    lambda st: ts.train_step(st, views, sc), state
  )

  # Optimizer state mirrors params only: no centres in it.
  assert jax.tree.structure(state.params) == jax.tree.structure(
    new_state.opt_state[1][0].trace
  )
  expected, counts = expected_centres(
    state, views['y_l'], z_l, z_w, y_hat, m, sc.center_momentum
  )
  np.testing.assert_allclose(
    new_state.cluster.centers, expected, rtol=1e-5, atol=1e-7
  )
  np.testing.assert_array_equal(new_state.cluster.counts, counts)
  assert metrics['num_centers'] == float((counts > 0).sum())


def test_init_is_bit_identical_to_a_default_compile():
  """create_train_state compiles at a lower XLA:CPU level (faster); same bits."""
  config = tiny_config('layermatch')
  model = models.create_model(config.model, K, axis_name=ts.AXIS)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  rng = jax.random.key(5)
  state = create_train_state(model, tx, rng, (8, 8, 3), K)
  init_rng, state_rng = jax.random.split(rng)
  # The reference at XLA:CPU's default level, named in case XLA_FLAGS lowers it.
  init = jax.jit(lambda r: model.init(r, jnp.zeros((1, 8, 8, 3)), train=False))
  variables = init.lower(init_rng).compile(
    {'xla_backend_optimization_level': 3}
  )(init_rng)
  chex.assert_trees_all_equal(
    (state.params, state.batch_stats, state.ema_params),
    (variables['params'], variables['batch_stats'], variables['params']),
  )
  np.testing.assert_array_equal(state.rng, jax.random.key_data(state_rng))


def test_step_metrics_and_state_bookkeeping():
  model, state, views, sc = _setup()
  losses = reference_losses(model, state, views, sc)
  ls, lu, lc, (_, _, y_hat, m) = _on_one_device(losses, state.params)
  y_hat, m = np.asarray(y_hat), np.asarray(m)
  confident = np.flatnonzero(m)
  assert 3 <= len(confident) < len(m)
  # Hidden labels where the mask matters: every confident pseudo-label right but
  # one wrong and one unknown (-1), every other one wrong.
  y_u = np.where(m > 0, y_hat, (y_hat + 1) % K).astype(np.int32)
  y_u[confident[0]], y_u[confident[1]] = -1, (y_hat[confident[1]] + 1) % K
  views = dict(views, y_u=y_u)
  new_state, metrics = _on_one_device(
    lambda st: ts.train_step(st, views, sc, True), state
  )
  n_confident, n = len(confident), len(m)
  np.testing.assert_allclose(
    metrics['pseudo_label_acc'], (n_confident - 2) / (n - 1), rtol=1e-6
  )
  np.testing.assert_allclose(
    metrics['confident_pseudo_label_acc'],
    (n_confident - 2) / (n_confident - 1),
    rtol=1e-6,
  )
  np.testing.assert_allclose(metrics['loss_sup'], ls, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_unsup'], lu, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss_cluster'], lc, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], ls + lu + lc, rtol=1e-5)
  np.testing.assert_allclose(metrics['mask_ratio'], np.mean(m), rtol=1e-6)
  np.testing.assert_allclose(
    metrics['lr'], sc.learning_rate, rtol=1e-6
  )  # step 0
  assert (
    metrics['grad_norm/head/unsup'] == 0.0
    and metrics['grad_norm/head/cluster'] == 0.0
  )
  assert metrics['grad_norm/backbone/cluster'] > 0
  assert int(new_state.step) == 1
  # EMA with warm-up at step 0: decay min(0.999, 1 / 10).
  _allclose(
    new_state.ema_params,
    jax.tree.map(
      lambda p0, p1: 0.1 * p0 + 0.9 * p1, state.params, new_state.params
    ),
    atol=1e-7,
  )
  np.testing.assert_allclose(ts.ema_decay_at(9990, sc), 0.999)
  np.testing.assert_allclose(ts.ema_decay_at(90, sc), 0.91)
  # BatchNorm running statistics moved.
  assert (
    _max_abs(
      jax.tree.map(lambda a, b: a - b, new_state.batch_stats, state.batch_stats)
    )
    > 0
  )


def test_supervised_preset_ignores_unlabeled_data_and_fixmatch_keeps_centres():
  _, state, views, sc = _setup('supervised')
  assert not sc.use_unlabeled
  only_labeled = {k: views[k] for k in ('x_l', 'y_l')}
  new_a, m_a = _on_one_device(lambda st: ts.train_step(st, views, sc), state)
  new_b, m_b = _on_one_device(
    lambda st: ts.train_step(st, only_labeled, sc), state
  )
  chex.assert_trees_all_equal(new_a.params, new_b.params)
  assert float(m_a['loss_unsup']) == 0.0 and 'mask_ratio' not in m_a

  _, state, views, sc = _setup('fixmatch')
  assert sc.head_grad_scale == 1.0 and not sc.use_clustering
  new_state, metrics = _on_one_device(
    lambda st: ts.train_step(st, views, sc), state
  )
  np.testing.assert_array_equal(
    new_state.cluster.centers, state.cluster.centers
  )
  assert (
    float(metrics['loss_cluster']) == 0.0 and float(metrics['loss_unsup']) > 0
  )


def test_presets_and_overrides():
  from layermatch_jax.algorithms import presets

  assert presets.resolve(tiny_config('layermatch')) == dict(
    unsup_weight=1.0,
    head_grad_scale=0.0,
    cluster_weight=1.0,
    head_bias_grad_scale=0.0,
    head_grad_rule='static',
  )
  knobs = presets.resolve(
    tiny_config('fixmatch', **{'layermatch.cluster_weight': 0.5})
  )
  assert knobs['head_grad_scale'] == 1.0 and knobs['cluster_weight'] == 0.5
  with pytest.raises(ValueError, match=r"algorithm='mixmatch' is not one of"):
    presets.resolve(tiny_config('mixmatch'))


def test_lr_schedule_and_masked_weight_decay():
  config = tiny_config()
  schedule = optim.fixmatch_cosine_schedule(0.03, 1000)
  np.testing.assert_allclose(
    [schedule(0), schedule(500), schedule(1000)],
    [0.03, 0.03 * np.cos(7 * np.pi / 32), 0.03 * np.cos(7 * np.pi / 16)],
    rtol=1e-6,
  )
  params = {
    'conv': {'kernel': jnp.ones((2, 2))},
    'bn': {'scale': jnp.ones(2), 'bias': jnp.ones(2)},
  }
  config.optim.momentum = 0.0
  config.optim.weight_decay = 0.1
  tx = optim.make_optimizer(config.optim, 1000)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['conv']['kernel'], 1 - 0.03 * 0.1, rtol=1e-6)
  np.testing.assert_array_equal(new['bn']['scale'], 1.0)
  np.testing.assert_array_equal(new['bn']['bias'], 1.0)
