"""The pure LayerMatch train step (DESIGN.md section 1).

  L = L_s + lambda_u L_u + lambda_c L_c
  L_s = CE(h_W(g(x_l)), y_l)
  L_u = mean_i m_i CE(h_W~(g(x_s,i)), y_hat_i),   W~ = alpha W + (1 - alpha) sg(W)
  L_c = mean_i m_i CE(softmax(<z_s,i, C> / T), y_hat_i)

with (y_hat, m) from the weak view by the pseudo-label policy (algorithms/
policies.py): m is a hard mask (fixed, flexmatch, freematch) or a soft weight in
[0, 1] (softmatch); L_u and Avg-Clustering (loss and centre update) use m as
given. FreeMatch adds its fairness term w_f L_f ('fairness'), computed from the
same strong-view logits as L_u, so Grad-ReLU scales its head gradient too.
With layermatch.head_grad_rule='consensus', alpha becomes per sample: alpha_i = 1
where y_hat_i equals the class of the nearest centre to z_w,i, the static alpha
elsewhere (grad_relu.mix_per_sample; still one backward pass). With 'warmup',
alpha(t) rises from the static alpha to 1 over the first head_grad_warmup_steps.

One forward pass over [x_l, x_w, x_s], so BatchNorm sees the whole global batch
(cross-device through `axis_name`). A model's stochastic layers (a ViT's drop
path) draw from the 'dropout' rng, one key per step and device (`dropout_key`).

Everything here runs per device inside `jax.pmap` (or `jax.vmap`) with the axis
named `StepConfig.axis_name` bound: gradients and metrics are averaged over it,
centre statistics summed over it.
"""

import dataclasses
from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from layermatch_jax import optim, views as views_lib
from layermatch_jax.algorithms import (
  avg_clustering,
  grad_relu,
  policies,
  presets,
)
from layermatch_jax.models import Classifier
from layermatch_jax.parallel import AXIS
from layermatch_jax.state import TrainState

TERMS = (
  'sup',
  'unsup',
  'cluster',
)  # Always present; see StepConfig.terms for the rest.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static hyper-parameters of a step, read from a config by `from_config`.

  No field has a default: every value comes from the config (configs/default.py
  holds the defaults). The step closes over it (functools.partial), so a new
  StepConfig means a new trace.
  """

  num_classes: int
  learning_rate: float
  total_steps: int
  warmup_steps: int  # optim.warmup_steps: the learning rate's linear warm-up.
  pseudo_label: policies.PolicyConfig
  unsup_weight: float
  head_grad_scale: float
  head_bias_grad_scale: float
  head_grad_rule: str
  head_grad_warmup_steps: int  # Used by head_grad_rule='warmup'.
  cluster_weight: float
  center_momentum: float
  temperature: float
  ema_decay: float
  ema_warmup: bool
  mean: Tuple[float, ...]
  std: Tuple[float, ...]
  pad_fraction: float
  flip: bool
  num_ops: int
  cutout_fraction: float
  axis_name: Optional[str] = (
    AXIS  # None: no device axis bound (a plain jit or call).
  )

  @classmethod
  def from_config(cls, config, num_classes: int) -> 'StepConfig':
    knobs = presets.resolve(config)
    return cls(
      num_classes=num_classes,
      learning_rate=config.optim.learning_rate,
      total_steps=config.num_train_steps,
      warmup_steps=config.optim.warmup_steps,
      pseudo_label=policies.PolicyConfig.from_config(
        config, presets.resolve_policy(config)
      ),
      center_momentum=config.layermatch.center_momentum,
      temperature=config.layermatch.temperature,
      ema_decay=config.optim.ema_decay,
      ema_warmup=config.optim.ema_warmup,
      mean=tuple(config.data.mean),
      std=tuple(config.data.std),
      pad_fraction=config.augment.pad_fraction,
      flip=config.augment.flip,
      num_ops=config.augment.num_ops,
      cutout_fraction=config.augment.cutout_fraction,
      head_grad_warmup_steps=max(
        1,
        round(
          config.layermatch.head_grad_warmup_fraction * config.num_train_steps
        ),
      ),
      **knobs,
    )

  @property
  def threshold(self) -> float:
    return self.pseudo_label.threshold

  @property
  def terms(self) -> Tuple[str, ...]:
    """The loss terms of this step: TERMS, plus 'fairness' for FreeMatch."""
    return TERMS + (
      ('fairness',)
      if self.use_unlabeled and self.pseudo_label.has_fairness
      else ()
    )

  @property
  def use_unlabeled(self) -> bool:
    return self.unsup_weight > 0 or self.cluster_weight > 0

  @property
  def use_clustering(self) -> bool:
    return self.cluster_weight > 0

  @property
  def head_grad_scales(self) -> Dict[str, float]:
    return {'kernel': self.head_grad_scale, 'bias': self.head_bias_grad_scale}

  def learning_rate_at(self, step):
    """The optimizer's base learning rate at `step` (for the metrics; a ViT's
    layer-wise decay scales it per layer)."""
    return optim.warmup_cosine_schedule(
      self.learning_rate, self.total_steps, self.warmup_steps
    )(step)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _ratio(num, den, axis_name):
  """Global num/den over devices; NaN when nothing was counted."""
  num, den = _psum((num, den), axis_name)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), jnp.nan)


# Far from views.py's augmentation streams (0, 1, 2), folded in the same way.
_DROPOUT_STREAM = 1 << 16


def dropout_key(state: TrainState, axis_name):
  """The model's 'dropout' rng (a ViT's drop path): one key per step and device.

  Unused, so compiled away, by the models without stochastic layers (WRN, ResNet).
  """
  key = jax.random.fold_in(
    jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step),
    _DROPOUT_STREAM,
  )
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  return key


def loss_terms(params, state: TrainState, views, sc: StepConfig):
  """The weighted loss terms {name: value for name in sc.terms} and aux outputs.

  `views`: x_l [B,H,W,C] float, y_l [B] int, and when unlabeled data is used
  x_w, x_s [muB,H,W,C] float, optionally y_u [muB] (hidden labels, -1 unknown)
  and idx_u [muB] (pool index of each unlabeled image; FlexMatch needs it).
  aux['policy'] is the policy state after this step.
  """
  head = lambda head_params, z: state.apply_fn(
    {'params': {'head': head_params}}, z, method=Classifier.classify
  )
  n_l = views['x_l'].shape[0]
  x = views['x_l']
  if sc.use_unlabeled:
    x = jnp.concatenate([views['x_l'], views['x_w'], views['x_s']])
  z, updates = state.apply_fn(
    {'params': params, 'batch_stats': state.batch_stats},
    x,
    train=True,
    mutable=['batch_stats'],
    rngs={'dropout': dropout_key(state, sc.axis_name)},
    method=Classifier.features,
  )

  z_l = z[:n_l]
  loss_sup = optax.softmax_cross_entropy_with_integer_labels(
    head(params['head'], z_l), views['y_l']
  ).mean()
  aux = dict(batch_stats=updates['batch_stats'], z_l=jax.lax.stop_gradient(z_l))
  zero = jnp.zeros((), jnp.float32)
  loss_unsup = loss_cluster = loss_fairness = zero
  aux.update(policy=state.policy, policy_metrics={})

  if sc.use_unlabeled:
    z_w, z_s = jnp.split(z[n_l:], 2)
    stopped_head = jax.lax.stop_gradient(params['head'])
    probs_w = jax.nn.softmax(head(stopped_head, jax.lax.stop_gradient(z_w)))
    probs_l = jax.nn.softmax(head(stopped_head, aux['z_l']))
    sel = policies.select(
      state.policy,
      policies.PolicyInputs(probs_w, probs_l, views.get('idx_u')),
      sc.pseudo_label,
      sc.axis_name,
    )
    pseudo, mask = sel.labels, sel.weights
    # Grad-ReLU: the head sees the pseudo-label loss through W~ (alpha-scaled gradient).
    logits_s = head(
      grad_relu.mask_head(params['head'], sc.head_grad_scales), z_s
    )
    if sc.use_clustering:
      # The nearest centre's vote on the same weak view the pseudo-label came from.
      centre_labels, has_centres = avg_clustering.nearest_centre(
        jax.lax.stop_gradient(z_w), state.cluster
      )
      agree = grad_relu.consensus_share(pseudo, centre_labels, has_centres)
      aux.update(agree=agree, has_centres=has_centres)
    if sc.head_grad_rule == 'consensus':
      # Where head and centre agree, the head learns from the pseudo-label in full.
      logits_s = grad_relu.mix_per_sample(
        head(params['head'], z_s), logits_s, agree
      )
    elif sc.head_grad_rule == 'warmup':
      share = grad_relu.warmup_share(state.step, sc.head_grad_warmup_steps)
      logits_s = grad_relu.mix_per_sample(
        head(params['head'], z_s), logits_s, jnp.full(pseudo.shape, share)
      )
    loss_unsup = jnp.mean(
      mask * optax.softmax_cross_entropy_with_integer_labels(logits_s, pseudo)
    )
    if sc.use_clustering:
      loss_cluster = avg_clustering.cluster_loss(
        z_s, state.cluster, pseudo, mask, sc.temperature
      )
    if 'fairness' in sc.terms:
      loss_fairness = policies.freematch_fairness(
        sel.state, jax.nn.softmax(logits_s), mask, sc.axis_name
      )
    aux.update(
      z_w=jax.lax.stop_gradient(z_w),
      probs_w=probs_w,
      pseudo=pseudo,
      mask=mask,
      policy=sel.state,
      policy_metrics=sel.metrics,
    )

  terms = dict(
    sup=loss_sup,
    unsup=sc.unsup_weight * loss_unsup,
    cluster=sc.cluster_weight * loss_cluster,
  )
  if 'fairness' in sc.terms:
    terms['fairness'] = sc.pseudo_label.fairness_weight * loss_fairness
  aux.update(
    loss_unsup=loss_unsup,
    loss_cluster=loss_cluster,
    loss_fairness=loss_fairness,
  )
  return terms, aux


def total_loss(params, state, views, sc):
  terms, aux = loss_terms(params, state, views, sc)
  return sum(terms[name] for name in sc.terms), (terms, aux)


def term_gradients(state: TrainState, views, sc: StepConfig):
  """Per-term gradients {name: {'backbone', 'head'} for name in sc.terms} and aux.

  One forward pass and one backward pass per term, averaged over devices. Their
  sum is the step's gradient.
  """
  terms, vjp_fn, aux = jax.vjp(
    lambda p: loss_terms(p, state, views, sc), state.params, has_aux=True
  )
  grads = {}
  for name in sc.terms:
    cotangent = {
      k: jnp.ones_like(v) if k == name else jnp.zeros_like(v)
      for k, v in terms.items()
    }
    grads[name] = _pmean(vjp_fn(cotangent)[0], sc.axis_name)
  return grads, terms, aux


def _metrics(terms, aux, views, sc: StepConfig) -> Dict[str, jax.Array]:
  axis = sc.axis_name
  m = dict(
    loss_sup=terms['sup'],
    loss_unsup=aux['loss_unsup'],
    loss_cluster=aux['loss_cluster'],
  )
  if 'fairness' in terms:
    m['loss_fairness'] = aux['loss_fairness']
  m['loss'] = sum(terms[name] for name in sc.terms)
  m = {k: _pmean(v, axis) for k, v in m.items()}
  # Policy statistics are global already: the same value on every device.
  m.update(aux['policy_metrics'])
  if sc.use_unlabeled:
    mask = aux['mask']
    m['mask_ratio'] = _pmean(
      jnp.mean(mask), axis
    )  # SoftMatch: the mean weight.
    y_u = views.get('y_u')
    if y_u is not None:
      known = (y_u >= 0).astype(jnp.float32)
      correct = (aux['pseudo'] == y_u).astype(jnp.float32) * known
      # Of all pseudo-labels, and of the confident ones that actually train.
      m['pseudo_label_acc'] = _ratio(correct.sum(), known.sum(), axis)
      m['confident_pseudo_label_acc'] = _ratio(
        (correct * mask).sum(), (known * mask).sum(), axis
      )
  if sc.use_unlabeled and sc.use_clustering:
    # Of the confident pseudo-labels, the share the nearest centre agrees with:
    # under head_grad_rule='consensus', the share whose head gradient passes.
    m['centre_agreement'] = jnp.where(
      aux['has_centres'],
      _ratio((aux['agree'] * aux['mask']).sum(), aux['mask'].sum(), axis),
      jnp.nan,
    )
  return m


def ema_decay_at(step, sc: StepConfig):
  """The parameter EMA's decay; with warm-up min(decay, (1 + t) / (10 + t)).

  Without warm-up a 0.999 EMA still weighs the random initialisation by
  0.999^t (0.74 after 300 steps), which ruins evaluation of short runs.
  """
  if not sc.ema_warmup:
    return sc.ema_decay
  return jnp.minimum(sc.ema_decay, (1.0 + step) / (10.0 + step))


def _check_views(views, sc: StepConfig):
  """Shapes at the step's boundary (checked once, when traced)."""
  b = views['x_l'].shape[0]
  chex.assert_rank(views['x_l'], 4)
  chex.assert_shape(views['y_l'], (b,))
  if sc.use_unlabeled:
    chex.assert_equal_shape([views['x_w'], views['x_s']])
    chex.assert_equal_shape_suffix([views['x_l'], views['x_w']], 3)


def train_step(
  state: TrainState, views, sc: StepConfig, grad_norms_by_term: bool = False
) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimisation step on already augmented, normalised views."""
  _check_views(views, sc)
  if grad_norms_by_term:
    term_grads, terms, aux = term_gradients(state, views, sc)
    grads = jax.tree.map(lambda *g: sum(g), *term_grads.values())
  else:
    grads, (terms, aux) = jax.grad(total_loss, has_aux=True)(
      state.params, state, views, sc
    )
    grads = _pmean(grads, sc.axis_name)

  metrics = _metrics(terms, aux, views, sc)
  metrics['lr'] = sc.learning_rate_at(state.step)
  # The head's size before this update: what Grad-ReLU changes is what it learns from.
  metrics['head_kernel_norm'] = optax.tree.norm(state.params['head']['kernel'])
  metrics['head_bias_norm'] = optax.tree.norm(state.params['head']['bias'])
  for subtree in ('backbone', 'head'):
    metrics[f'grad_norm/{subtree}'] = optax.tree.norm(grads[subtree])
    if grad_norms_by_term:
      for name in sc.terms:
        metrics[f'grad_norm/{subtree}/{name}'] = optax.tree.norm(
          term_grads[name][subtree]
        )

  new_state = state.apply_gradients(
    grads=grads, batch_stats=aux['batch_stats'], policy=aux['policy']
  )
  new_state = new_state.replace(
    ema_params=optax.incremental_update(
      new_state.params,
      state.ema_params,
      step_size=1.0 - ema_decay_at(state.step, sc),
    )
  )

  if sc.use_clustering:
    # Centres move by their EMA rule only, from this step's (stopped) features:
    # labeled samples with their labels, weak views with pseudo-labels weighted
    # by the policy's m (a 0/1 mask, or SoftMatch's soft weights as given).
    feats = jnp.concatenate([aux['z_l'], aux['z_w']])
    labels = jnp.concatenate([views['y_l'], aux['pseudo']])
    weights = jnp.concatenate(
      [jnp.ones_like(views['y_l'], jnp.float32), aux['mask']]
    )
    sums, counts = avg_clustering.class_feature_sums(
      feats, labels, weights, sc.num_classes, sc.axis_name
    )
    new_state = new_state.replace(
      cluster=avg_clustering.update_centers(
        state.cluster, sums, counts, sc.center_momentum
      )
    )
    metrics['num_centers'] = jnp.sum(new_state.cluster.counts > 0).astype(
      jnp.float32
    )
  return new_state, metrics


def train_step_on_batch(
  state: TrainState, batch, sc: StepConfig, grad_norms_by_term: bool = False
):
  """Augments a uint8 host batch on device, then runs `train_step`.

  `batch`: labeled_image, labeled_label, unlabeled_image, unlabeled_label and
  unlabeled_index (the per-device slice of the pipeline's batch).
  """
  views = views_lib.make_views(state.rng, state.step, batch, sc)
  return train_step(state, views, sc, grad_norms_by_term)
