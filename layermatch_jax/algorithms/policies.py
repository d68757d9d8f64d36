"""Pseudo-label policies: which unlabeled samples train, with which label and weight.

A policy is two pure functions over its own state, a small pytree kept in
`TrainState.policy` (so it is checkpointed with the rest of the state):

  state = POLICIES[name].init(num_classes, pool_size)
  sel = POLICIES[name].select(state, inputs, pc, axis_name)
  # sel.labels [n] int, sel.weights [n] in [0, 1], sel.state (updated), sel.metrics

`inputs` holds the weak-view probabilities of this device's unlabeled batch (and,
for the policies that use them, the labeled batch's probabilities and each
unlabeled image's index in the unlabeled pool); `pc` is a `PolicyConfig`. Every
statistic a state update reads (class counts, batch means, histograms) is taken
over the *global* batch through `axis_name`, so all replicas hold the same state
and the state does not depend on how many devices share the batch.

  fixed      FixMatch (Sohn et al., NeurIPS 2020): m = [max p >= tau].
  flexmatch  FlexMatch (Zhang et al., NeurIPS 2021): per-class thresholds from
             each class's learning effect, with threshold warm-up and the
             non-linear mapping M(x) = x / (2 - x).
  freematch  FreeMatch (Wang et al., ICLR 2023): self-adaptive global and local
             thresholds from EMAs of the confidence, and the self-adaptive
             fairness term (`freematch_fairness`), an extra loss.
  softmatch  SoftMatch (Chen et al., ICLR 2023): truncated Gaussian weights with
             an EMA mean and variance of the confidence, uniform alignment.

Comparisons use >= throughout (USB's `ge`; FlexMatch's and FreeMatch's papers
write >). Where USB's code differs from a paper in more than that, the function
says so and which one it follows.
"""

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from layermatch_jax.algorithms import pseudo_label

FLEXMATCH_MAPPINGS = ('convex', 'linear')
SOFTMATCH_ALIGNMENTS = ('uniform', 'labeled', 'none')


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Static hyper-parameters of the pseudo-label policies (hashable, for jit).

  The field defaults serve direct construction (tests, notebooks) and equal the
  values of configs/default.py, which `from_config` reads.
  """

  name: str = 'fixed'
  threshold: float = (
    0.95  # tau: FixMatch's threshold; FlexMatch's upper threshold.
  )
  flexmatch_warmup: bool = True
  flexmatch_mapping: str = 'convex'
  freematch_momentum: float = 0.999  # lambda
  fairness_weight: float = 0.0  # w_f (FreeMatch only; 0 turns the term off)
  softmatch_momentum: float = 0.999  # m
  softmatch_n_sigma: float = (
    2.0  # The Gaussian's std is sigma_t / n_sigma (USB: 2).
  )
  softmatch_alignment: str = 'uniform'

  @classmethod
  def from_config(cls, config, name: str) -> 'PolicyConfig':
    """From `config.pseudo_label`; `name` is the resolved policy (presets.resolve_policy)."""
    pl = config.pseudo_label
    return cls(
      name=name,
      threshold=float(pl.threshold),
      flexmatch_warmup=bool(pl.flexmatch.threshold_warmup),
      flexmatch_mapping=str(pl.flexmatch.mapping),
      freematch_momentum=float(pl.freematch.ema_momentum),
      # The fairness term needs FreeMatch's state: other policies have none.
      fairness_weight=float(pl.freematch.fairness_weight)
      if name == 'freematch'
      else 0.0,
      softmatch_momentum=float(pl.softmatch.ema_momentum),
      softmatch_n_sigma=float(pl.softmatch.n_sigma),
      softmatch_alignment=str(pl.softmatch.alignment),
    )

  @property
  def has_fairness(self) -> bool:
    return self.name == 'freematch' and self.fairness_weight > 0


class PolicyInputs(NamedTuple):
  probs_w: (
    jax.Array
  )  # [n, K] weak-view probabilities of this device's unlabeled batch.
  probs_l: Optional[jax.Array] = (
    None  # [b, K] labeled batch (SoftMatch 'labeled' target).
  )
  idx_u: Optional[jax.Array] = (
    None  # [n] int: index in the unlabeled pool (FlexMatch).
  )


class Selection(NamedTuple):
  labels: jax.Array  # [n] int: y_hat.
  weights: jax.Array  # [n] float32 in [0, 1]: m.
  state: Any  # The policy state after this step.
  metrics: Dict[
    str, jax.Array
  ]  # Scalars for logging, the same on every device.


class Policy(NamedTuple):
  init: Callable[[int, Optional[int]], Any]
  select: Callable[..., Selection]


# --- Global-batch statistics (values identical on every device).


def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _global_mean(x, axis_name):
  """Mean over the global batch of x [n, ...] (sums and counts travel, not means)."""
  total, count = _psum((jnp.sum(x, axis=0), jnp.float32(x.shape[0])), axis_name)
  return total / count


def _all_gather(x, axis_name):
  """The global batch's x in device order, i.e. the order of a 1-device batch."""
  return (
    x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)
  )


def _sum_over_devices(x, axis_name):
  """psum(x) in value, with this device's x in the gradient scaled by the device count.

  The step averages gradients over devices, so a loss of the global sum must give
  each device D times its share; this way no gradient flows through a collective.
  """
  if axis_name is None:
    return x
  total = jax.lax.psum(jax.lax.stop_gradient(x), axis_name)
  return total + jax.lax.psum(1, axis_name) * (x - jax.lax.stop_gradient(x))


def _sum_norm(x):
  return x / jnp.sum(x, axis=-1, keepdims=True)


def _ema(old, new, momentum):
  return momentum * old + (1.0 - momentum) * new


# --- fixed (FixMatch)


def _fixed_init(num_classes, pool_size=None):
  del num_classes, pool_size
  return {}


def _fixed_select(
  state, inputs: PolicyInputs, pc: PolicyConfig, axis_name=None
):
  del axis_name
  labels, weights = pseudo_label.fixed_threshold(inputs.probs_w, pc.threshold)
  return Selection(labels, weights, state, {})


# --- flexmatch (FlexMatch, curriculum pseudo-labelling)


def _flexmatch_init(num_classes, pool_size=None):
  del num_classes
  if pool_size is None or pool_size <= 0:
    raise ValueError(
      f'flexmatch needs the unlabeled pool size (got {pool_size!r}): pass '
      'unlabeled_pool_size=data.unlabeled_pool_size(source)'
    )
  # The latest confident prediction of every unlabeled image; -1 = unused.
  return dict(selected=jnp.full((pool_size,), -1, jnp.int32))


def flexmatch_thresholds(
  selected,
  num_classes: int,
  threshold: float,
  warmup: bool = True,
  mapping: str = 'convex',
):
  """T(c) = M(beta(c)) tau from the recorded predictions (FlexMatch eqs. 6-11).

  sigma(c) = #{n: u_n = c} (learning effect), unused = #{n: u_n = -1};
  beta(c) = sigma(c) / max(max_c sigma, unused) with warm-up, sigma(c) / max_c sigma
  without (0 while nothing is recorded); M(x) = x / (2 - x) ('convex') or x ('linear').
  USB leaves its thresholds unchanged when one class holds the whole pool; here
  the formula still applies (beta = 1 for that class).
  """
  counts = jnp.bincount(selected + 1, length=num_classes + 1).astype(
    jnp.float32
  )
  unused, sigma = counts[0], counts[1:]
  denom = jnp.maximum(jnp.max(sigma), unused) if warmup else jnp.max(sigma)
  beta = sigma / jnp.maximum(denom, 1.0)
  if mapping == 'convex':
    mapped = beta / (2.0 - beta)
  elif mapping == 'linear':
    mapped = beta
  else:
    raise ValueError(
      f'flexmatch mapping={mapping!r} is not one of {FLEXMATCH_MAPPINGS}'
    )
  return threshold * mapped


def _record_confident(selected, idx, labels, confident):
  """selected[idx_i] = labels_i for confident i; of repeats, the last one wins.

  Indices outside [0, pool) are ignored. Scatter order of repeated indices is not
  defined in XLA, so the winner is picked first (deterministically).
  """
  pool = selected.shape[0]
  pos = jnp.arange(idx.shape[0], dtype=jnp.int32)
  ok = confident & (idx >= 0) & (idx < pool)
  target = jnp.where(ok, idx, pool)  # Out of range: dropped by the scatters.
  last = jnp.full((pool,), -1, jnp.int32).at[target].max(pos, mode='drop')
  keep = ok & (last[jnp.clip(target, 0, pool - 1)] == pos)
  return selected.at[jnp.where(keep, idx, pool)].set(
    labels.astype(jnp.int32), mode='drop'
  )


def _flexmatch_select(
  state, inputs: PolicyInputs, pc: PolicyConfig, axis_name=None
):
  """FlexMatch: m = [max p >= T(y_hat)], then record this batch's confident predictions.

  Order and bookkeeping follow the paper's Algorithm 1 and USB alike: the
  thresholds come from the predictions recorded before this batch; a prediction
  is recorded only when max p >= tau, and a recorded label stays until the
  image is predicted confidently again (it is not reset when confidence drops).
  Unlike USB, whose hook records only each GPU's own images (so DDP replicas
  drift apart), every replica records the whole global batch.
  """
  if inputs.idx_u is None:
    raise ValueError(
      "flexmatch needs each unlabeled image's pool index: views['idx_u'] "
      "(the pipeline's 'unlabeled_index')"
    )
  probs = jax.lax.stop_gradient(inputs.probs_w)
  num_classes = probs.shape[-1]
  conf, labels = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
  thresholds = flexmatch_thresholds(
    state['selected'],
    num_classes,
    pc.threshold,
    pc.flexmatch_warmup,
    pc.flexmatch_mapping,
  )
  weights = (conf >= thresholds[labels]).astype(jnp.float32)
  # Every device records the whole global batch, so the replicas stay identical.
  selected = _record_confident(
    state['selected'],
    _all_gather(inputs.idx_u, axis_name),
    _all_gather(labels, axis_name),
    _all_gather(conf >= pc.threshold, axis_name),
  )
  metrics = {
    'policy/threshold_mean': jnp.mean(thresholds),
    'policy/pool_used': jnp.mean((selected >= 0).astype(jnp.float32)),
  }
  return Selection(labels, weights, dict(selected=selected), metrics)


# --- freematch (FreeMatch, self-adaptive thresholding)


def _freematch_init(num_classes, pool_size=None):
  """tau_0 = 1/C, p_0(c) = 1/C, h_0(c) = 1/C (the paper, TorchSSL and current USB).

  Older USB versions (FreeMatchThresholingHook) start all three at 1 (time_p = 1,
  p_model = label_hist = ones), so nothing passes the threshold in the first steps.
  """
  del pool_size
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return dict(tau=jnp.float32(1.0 / num_classes), p_model=uniform, hist=uniform)


def _freematch_select(
  state, inputs: PolicyInputs, pc: PolicyConfig, axis_name=None
):
  """FreeMatch SAT: update the EMAs with this batch, then threshold with them.

    tau_t  = lam tau_{t-1} + (1 - lam) mean_b max q_b          (global, eq. 5)
    p_t(c) = lam p_{t-1}(c) + (1 - lam) mean_b q_b(c)          (local, eq. 6)
    h_t(c) = lam h_{t-1}(c) + (1 - lam) Hist(argmax q_b)(c)     (for L_f, eq. 9)
    tau_t(c) = MaxNorm(p_t)(c) tau_t,  m_b = [max q_b >= tau_t(argmax q_b)]

  means over the global unlabeled batch; hard labels y_hat = argmax q.
  """
  probs = jax.lax.stop_gradient(inputs.probs_w)
  num_classes = probs.shape[-1]
  conf, labels = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
  lam = pc.freematch_momentum
  tau = _ema(state['tau'], _global_mean(conf, axis_name), lam)
  p_model = _ema(state['p_model'], _global_mean(probs, axis_name), lam)
  hist = _ema(
    state['hist'],
    _global_mean(
      jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), axis_name
    ),
    lam,
  )
  local = tau * p_model / jnp.max(p_model)
  weights = (conf >= local[labels]).astype(jnp.float32)
  metrics = {'policy/threshold': tau, 'policy/threshold_min': jnp.min(local)}
  return Selection(
    labels, weights, dict(tau=tau, p_model=p_model, hist=hist), metrics
  )


def freematch_fairness(
  state, probs_s, weights, axis_name=None, eps: float = 1e-12
):
  """FreeMatch's self-adaptive fairness term (eqs. 10-11), over the global batch.

    p_bar = mean of the strong-view probabilities Q_b of the selected samples,
    h_bar = histogram of their argmax Q_b (normalised),
    L_f = -H(SumNorm(p_t / h_t), SumNorm(p_bar / h_bar)) = sum_c t_c log q_c

  with (p_t, h_t) this step's EMAs. Minimising L_f maximises that cross-entropy,
  which is what the paper writes and USB's code does (the sign is intended: it
  pushes the average prediction towards diversity). Like USB, classes absent
  from h_bar get 1/h_bar = 0, log has eps = 1e-12, and L_f = 0 when nothing is
  selected. USB computes p_bar and h_bar per GPU; here they are over the global
  batch (so the result does not depend on the device count). Gradients reach
  Q_b through p_bar only (h_bar is a count; t is state).
  """
  num_classes = probs_s.shape[-1]
  w = jax.lax.stop_gradient(weights)
  sum_q = _sum_over_devices(jnp.sum(w[:, None] * probs_s, axis=0), axis_name)
  onehot = jax.nn.one_hot(
    jnp.argmax(jax.lax.stop_gradient(probs_s), -1), num_classes
  )
  counts, selected = _psum(
    (jnp.sum(w[:, None] * onehot, axis=0), jnp.sum(w)), axis_name
  )
  p_bar = sum_q / jnp.maximum(selected, 1.0)
  h_bar = counts / jnp.maximum(selected, 1.0)
  inv_h = jnp.where(h_bar > 0, 1.0 / jnp.where(h_bar > 0, h_bar, 1.0), 0.0)
  # A class nobody has predicted for ~90k steps has h_t -> 0 (float32 underflow)
  # and p_t / h_t -> inf: it gets 0 instead, as USB's replace_inf_to_zero does.
  hist = state['hist']
  target = _sum_norm(
    jnp.where(
      hist > 1e-30, state['p_model'] / jnp.where(hist > 1e-30, hist, 1.0), 0.0
    )
  )
  # Nothing selected: a finite stand-in, or 0 * NaN would reach the gradient.
  q = _sum_norm(jnp.where(selected > 0, p_bar * inv_h, 1.0))
  loss = jnp.sum(target * jnp.log(q + eps))
  return jnp.where(selected > 0, loss, 0.0)


# --- softmatch (SoftMatch, truncated Gaussian weighting)

_UA_EPS = 1e-6  # USB's DistAlignEMAHook adds it to p_target and p_model.


def _softmatch_init(num_classes, pool_size=None):
  """mu_0 = 1/C, sigma_0^2 = 1 (paper and USB); p_target starts uniform.

  p_model starts empty (all zeros, which no mean of softmax outputs can be): the
  first step sets it to that batch's mean probabilities, as USB's DistAlignEMAHook
  does (p_model = None until then). An EMA step from uniform instead would
  still weigh the uniform start by m^t (22% after 1,500 steps at m = 0.999).
  """
  del pool_size
  uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  return dict(
    mu=jnp.float32(1.0 / num_classes),
    var=jnp.float32(1.0),
    p_model=jnp.zeros((num_classes,), jnp.float32),
    p_target=uniform,
  )


def _softmatch_select(
  state, inputs: PolicyInputs, pc: PolicyConfig, axis_name=None
):
  """SoftMatch: uniform alignment, then EMA Gaussian statistics, then weights.

    p_model = m p_model + (1 - m) mean_b p_b      (the first step: mean_b p_b)
    UA(p) = SumNorm(p * (p_target + eps) / (p_model + eps)),  p_target = u(C)  (eq. 12)
    c_b = max UA(p_b);  mu_t = m mu_{t-1} + (1 - m) mean_b c_b,
    sigma_t^2 = m sigma_{t-1}^2 + (1 - m) var_b(c_b)   (unbiased, N / (N - 1))
    lambda(p_b) = exp(-(min(c_b - mu_t, 0))^2 / (2 sigma_t^2 / n_sigma^2))   (eq. 8)

  over the global batch, with lambda_max = 1 (lambda_u scales the loss). Both
  the authors' TorchSSL code (variance / 4) and USB's classic-CV configs
  (n_sigma = 2, the default here) use std sigma_t / 2, the setting of the
  published results; the Gaussian as written in the paper is n_sigma = 1.
  mu_t and sigma_t^2 are taken over the aligned confidences, as USB does
  (TorchSSL takes them before alignment). Hard
  labels come from the un-aligned p, as USB does ("uniform alignment in softmatch
  do not use aligned probs for generating pseudo labels"). alignment 'labeled'
  is USB's dist_uniform=False (p_target: EMA of the labeled batch's mean
  probabilities), 'none' turns UA off. eps = 1e-6 as in USB's DistAlignEMAHook
  (the paper has none).
  """
  probs = jax.lax.stop_gradient(inputs.probs_w)
  m = pc.softmatch_momentum
  batch_p = _global_mean(probs, axis_name)
  # An all-zero p_model is the empty start (_softmatch_init): take the batch's mean.
  started = jnp.sum(state['p_model']) > 0
  p_model = jnp.where(started, _ema(state['p_model'], batch_p, m), batch_p)
  p_target = state['p_target']
  if pc.softmatch_alignment == 'labeled':
    if inputs.probs_l is None:
      raise ValueError(
        "softmatch alignment='labeled' needs the labeled batch's probabilities"
      )
    p_target = _ema(
      p_target,
      _global_mean(jax.lax.stop_gradient(inputs.probs_l), axis_name),
      m,
    )
  elif pc.softmatch_alignment not in SOFTMATCH_ALIGNMENTS:
    raise ValueError(
      f'softmatch alignment={pc.softmatch_alignment!r} is not one of '
      f'{SOFTMATCH_ALIGNMENTS}'
    )
  aligned = probs
  if pc.softmatch_alignment != 'none':
    aligned = _sum_norm(probs * (p_target + _UA_EPS) / (p_model + _UA_EPS))
  conf = jnp.max(aligned, axis=-1)
  batch_mean = _global_mean(conf, axis_name)
  sq_dev, count = _psum(
    (jnp.sum((conf - batch_mean) ** 2), jnp.float32(conf.shape[0])), axis_name
  )
  mu = _ema(state['mu'], batch_mean, m)
  var = _ema(state['var'], sq_dev / jnp.maximum(count - 1.0, 1.0), m)
  below = jnp.minimum(conf - mu, 0.0)
  weights = jnp.exp(-(below**2) / (2.0 * var / pc.softmatch_n_sigma**2))
  labels = jnp.argmax(probs, axis=-1)
  metrics = {'policy/mu': mu, 'policy/sigma': jnp.sqrt(var)}
  return Selection(
    labels,
    weights,
    dict(mu=mu, var=var, p_model=p_model, p_target=p_target),
    metrics,
  )


POLICIES = {
  'fixed': Policy(_fixed_init, _fixed_select),
  'flexmatch': Policy(_flexmatch_init, _flexmatch_select),
  'freematch': Policy(_freematch_init, _freematch_select),
  'softmatch': Policy(_softmatch_init, _softmatch_select),
}


def _get(name: str) -> Policy:
  if name not in POLICIES:
    raise ValueError(
      f'pseudo_label.policy={name!r} is not one of {sorted(POLICIES)}'
    )
  return POLICIES[name]


def init_state(name: str, num_classes: int, pool_size: Optional[int] = None):
  """The initial state of policy `name` (a pytree of arrays; {} for 'fixed')."""
  return _get(name).init(num_classes, pool_size)


def select(
  state, inputs: PolicyInputs, pc: PolicyConfig, axis_name=None
) -> Selection:
  """Pseudo-labels, weights, the next policy state and metrics for one step."""
  return _get(pc.name).select(state, inputs, pc, axis_name)
