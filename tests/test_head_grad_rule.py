"""Grad-ReLU's gradient scale and the head-gradient rules, exactly."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layermatch_jax import config_lib
from layermatch_jax import train_step as ts
from layermatch_jax.algorithms import grad_relu
from layermatch_jax.state import ClusterState
from tests.helpers import tiny_config
from tests.test_train_step import (
  _allclose,
  _max_abs,
  _on_one_device,
  _setup,
  reference_losses,
)


@pytest.mark.parametrize('scale', [0.0, 0.25, 0.5, 1.0])
def test_scale_gradient_keeps_the_value_and_passes_that_share_of_the_gradient(
  scale,
):
  x = jnp.asarray([0.5, -1.0, 2.0, 3.0])
  f = lambda v: jnp.sum(jnp.sin(v) * jnp.arange(1.0, 5.0))
  # Values on which scale x + (1 - scale) x is exact in float32.
  np.testing.assert_array_equal(grad_relu.scale_gradient(x, scale), x)
  grad = jax.grad(lambda v: f(grad_relu.scale_gradient(v, scale)))(x)
  # d/dv f = k cos(v), k = 1..4, written out.
  np.testing.assert_allclose(
    grad,
    scale * np.arange(1.0, 5.0) * np.cos(np.asarray(x)),
    rtol=1e-6,
    atol=1e-7,
  )


def _nearest_centre_votes(z_w, y_hat, cluster):
  """1 where y_hat is the class of the nearest updated centre (cosine), written out."""
  valid = np.asarray(cluster.counts) > 0
  c = np.asarray(cluster.centers, np.float64)
  z = np.asarray(z_w, np.float64)
  sims = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (
    c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  ).T
  nearest = np.argmax(np.where(valid[None, :], sims, -np.inf), axis=1)
  return (nearest == np.asarray(y_hat)).astype(np.float32) * float(
    valid.sum() >= 2
  )


def _grads(state, views, sc):
  return _on_one_device(
    lambda p: jax.grad(ts.total_loss, has_aux=True)(p, state, views, sc),
    state.params,
  )


def test_consensus_head_gradient_is_per_sample_and_backbone_unchanged():
  model, state, views, sc = _setup('layermatch_adaptive', threshold=0.0)
  assert sc.head_grad_rule == 'consensus' and sc.head_grad_scale == 0.0
  losses = reference_losses(model, state, views, sc)
  _, _, _, (_, z_w, y_hat, m) = _on_one_device(losses, state.params)
  agree = _nearest_centre_votes(z_w, y_hat, state.cluster)
  # Meaningful only if some confident samples agree and some do not.
  assert float(m.min()) == 1.0 and 0 < agree.mean() < 1

  g_s, g_full = _on_one_device(
    lambda p: (
      jax.grad(lambda q: losses(q)[0])(p),
      jax.grad(lambda q: sum(losses(q)[:3]))(p),
    ),
    state.params,
  )
  # The pseudo-label loss of the agreeing samples alone, written out: its head
  # gradient is the sum of those samples' gradients (the loss is linear in them).
  g_u_agreed = _on_one_device(
    lambda p, w: jax.grad(lambda q: _weighted_unsup(model, state, views, q, w))(
      p
    ),
    state.params,
    jnp.asarray(agree),
  )
  expected_head = jax.tree.map(
    lambda a, b: a + b, g_s['head'], g_u_agreed['head']
  )

  grads, (terms, _) = _grads(state, views, sc)
  _allclose(grads['head'], expected_head)
  _allclose(
    grads['backbone'], g_full['backbone']
  )  # The backbone sees every sample.
  assert (
    _max_abs(jax.tree.map(lambda a, b: a - b, grads['head'], g_s['head']))
    > 1e-4
  )

  # The same loss values as static LayerMatch (the rule moves gradients only).
  static_sc = _setup('layermatch', threshold=0.0)[3]
  _, (static_terms, _) = _grads(state, views, static_sc)
  chex.assert_trees_all_equal(terms, static_terms)

  # The logged agreement is this share of the confident pseudo-labels.
  _, metrics = _on_one_device(
    lambda st, v: ts.train_step(st, v, sc), state, views
  )
  np.testing.assert_allclose(
    metrics['centre_agreement'], agree.mean(), rtol=1e-6
  )


def _weighted_unsup(model, state, views, params, weights):
  """mean_i w_i CE(head(z_s,i), y_hat_i) with every mask 1 (threshold 0), written out."""
  from layermatch_jax import models  # pylint: disable=g-import-not-at-top

  x = jnp.concatenate([views['x_l'], views['x_w'], views['x_s']])
  z, _ = model.apply(
    {'params': params, 'batch_stats': state.batch_stats},
    x,
    train=True,
    mutable=['batch_stats'],
    method=models.Classifier.features,
  )
  n, u = views['x_l'].shape[0], views['x_w'].shape[0]
  z_w, z_s = z[n : n + u], z[n + u :]
  head = lambda p, f: f @ p['head']['kernel'] + p['head']['bias']
  y_hat = jnp.argmax(
    head(jax.lax.stop_gradient(params), jax.lax.stop_gradient(z_w)), 1
  )
  log_p = jax.nn.log_softmax(head(params, z_s))
  return jnp.mean(
    weights * -jnp.take_along_axis(log_p, y_hat[:, None], 1)[:, 0]
  )


def test_no_centre_vote_is_layermatch_and_full_agreement_is_fixmatch_with_clustering():
  model, state, views, sc = _setup('layermatch_adaptive', threshold=0.0)
  # Fewer than two centres: no vote, so every share is 0: static LayerMatch exactly.
  one_centre = state.replace(
    cluster=ClusterState(
      state.cluster.centers, jnp.asarray([3, 0, 0, 0], jnp.int32)
    )
  )
  static = _setup('layermatch', threshold=0.0)[3]
  _allclose(
    _grads(one_centre, views, sc)[0],
    _grads(one_centre, views, static)[0],
    atol=1e-6,
  )

  # Centres on the head's unit-norm class directions, no bias: the nearest centre
  # is the head's argmax, so every share is 1: the head gets the full gradient,
  # as FixMatch + Avg-Clustering (head_grad_scale=1) gives it.
  kernel = state.params['head']['kernel']
  kernel = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
  params = dict(
    state.params,
    head=dict(kernel=kernel, bias=jnp.zeros_like(state.params['head']['bias'])),
  )
  agreeing = state.replace(
    params=params,
    cluster=ClusterState(kernel.T, jnp.ones((kernel.shape[1],), jnp.int32)),
  )
  full = _setup(
    'layermatch', threshold=0.0, **{'layermatch.head_grad_scale': 1.0}
  )[3]
  ours, _ = _grads(agreeing, views, sc)
  _allclose(ours, _grads(agreeing, views, full)[0], atol=1e-6)
  assert (
    _max_abs(
      jax.tree.map(
        lambda a, b: a - b,
        ours['head'],
        _grads(agreeing, views, static)[0]['head'],
      )
    )
    > 1e-4
  )


@pytest.mark.parametrize(
  'overrides, message',
  [
    (
      {'layermatch.head_grad_rule': 'sometimes'},
      "config.layermatch.head_grad_rule='sometimes' is not valid: use one of "
      "['static', 'consensus', 'warmup']",
    ),
    (
      {'layermatch.head_grad_warmup_fraction': 0.0},
      'config.layermatch.head_grad_warmup_fraction=0.0 is not valid: use a number in (0, 1]',
    ),
    (
      {'algorithm': 'fixmatch', 'layermatch.head_grad_rule': 'consensus'},
      "layermatch.head_grad_rule='consensus' needs Avg-Clustering's centres",
    ),
  ],
)
def test_bad_rule_is_a_config_error(overrides, message):
  config = tiny_config(**overrides)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  assert message in str(e.value)


@pytest.mark.parametrize(
  'step, share', [(0, 0.0), (25, 0.25), (100, 1.0), (400, 1.0)]
)
def test_warmup_head_gradient_is_the_scheduled_share(step, share):
  # 300 train steps x 1/3: the head's pseudo-label gradient rises over 100 steps.
  model, state, views, sc = _setup(
    'layermatch_warmup', threshold=0.0, **{'num_train_steps': 300}
  )
  assert sc.head_grad_rule == 'warmup' and sc.head_grad_warmup_steps == 100
  state = state.replace(step=jnp.asarray(step, state.step.dtype))
  losses = reference_losses(model, state, views, sc)
  g_s, g_u, g_full = _on_one_device(
    lambda p: (
      jax.grad(lambda q: losses(q)[0])(p),
      jax.grad(lambda q: losses(q)[1])(p),
      jax.grad(lambda q: sum(losses(q)[:3]))(p),
    ),
    state.params,
  )
  grads, _ = _grads(state, views, sc)
  _allclose(
    grads['head'],
    jax.tree.map(lambda s, u: s + share * u, g_s['head'], g_u['head']),
  )
  _allclose(
    grads['backbone'], g_full['backbone']
  )  # The backbone gets everything, always.
  assert (
    _max_abs(g_u['head']) > 1e-3
  )  # The pseudo-label term does reach a head here.
