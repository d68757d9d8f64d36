"""The train state: everything a bit-exact resume needs, in one pytree."""

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from layermatch_jax.algorithms import policies
from layermatch_jax.algorithms.avg_clustering import ClusterState
from layermatch_jax.models import pretrained


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics, parameter EMA, centres, RNG and
  the pseudo-label policy's state.

  The centres live outside `params`, so neither `jax.grad` nor the optimizer
  ever touches them; the step updates them by their own EMA rule. The same
  holds for `policy`, the pseudo-label policy's state (algorithms/policies.py:
  {} for FixMatch, recorded predictions or EMAs for the others).
  """

  batch_stats: Any
  ema_params: Any
  cluster: ClusterState
  rng: jax.Array  # Base key; the step's key is fold_in(rng, step).
  policy: Any


def create_train_state(
  model,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  image_shape,
  num_classes: int,
  *,
  policy: str = 'fixed',
  unlabeled_pool_size: Optional[int] = None,
  init_from: Optional[str] = None,
  posemb_resize: str = 'bilinear',
) -> TrainState:
  """Initialises a model's variables (on the host's default device).

  `policy` names the pseudo-label policy whose state to create; FlexMatch needs
  `unlabeled_pool_size` (data.unlabeled_pool_size(source)). `init_from`
  (model.init_from): a ViT checkpoint file whose backbone replaces the random
  one (`with_pretrained_backbone`, its position embeddings resized by
  `posemb_resize`); not read when traced (jax.eval_shape).
  """

  def build(rng):
    init_rng, state_rng = jax.random.split(rng)
    # Evaluation-mode init: no cross-device axis is bound outside the step.
    variables = model.init(init_rng, jnp.zeros((1, *image_shape)), train=False)
    params = variables['params']
    feature_dim = params['head']['kernel'].shape[0]
    return TrainState.create(
      apply_fn=model.apply,
      params=params,
      tx=tx,
      # A model without BatchNorm (a ViT) has none: an empty collection.
      batch_stats=variables.get('batch_stats', {}),
      ema_params=jax.tree.map(jnp.copy, params),
      cluster=ClusterState.create(num_classes, feature_dim),
      rng=jax.random.key_data(state_rng),
      policy=policies.init_state(policy, num_classes, unlabeled_pool_size),
    )

  # One compiled program: op by op, the optimizer's and EMA's leaves would each
  # compile a small kernel (about 35 of them, 20 s on a busy 2-core CPU).
  init = jax.jit(build)
  if isinstance(
    rng, jax.core.Tracer
  ):  # Traced, e.g. by jax.eval_shape: no compile.
    return init(rng)
  state = init.lower(rng).compile(_init_compiler_options())(rng)
  if init_from:
    state, report = with_pretrained_backbone(
      state, tx, init_from, image_shape, posemb_resize
    )
    # The counts and what was left out; str(report) also names every tensor loaded.
    print('\n'.join(report.lines(loaded=False)), flush=True)
  return state


def with_pretrained_backbone(
  state: TrainState, tx, path: str, image_shape, posemb_resize='bilinear'
):
  """(state, report): the backbone of params and EMA params loaded from `path`
  (models/pretrained.py), the head as initialised, a fresh optimizer state."""
  params, report = pretrained.load_pretrained(
    jax.device_get(state.params),
    path,
    tuple(image_shape[:2]),
    posemb_resize,
  )
  params = jax.tree.map(jnp.asarray, params)
  return state.replace(
    params=params,
    ema_params=jax.tree.map(jnp.copy, params),
    opt_state=jax.jit(tx.init)(params),
  ), report


def _init_compiler_options() -> dict:
  """XLA:CPU compiles the initialisers' threefry bits slowly at its default -O3.

  LLVM -O1 compiles the WRN-10-1 init about 3 times faster (8 s instead of 26 s
  on a busy 2-core CPU) and gave bit-identical parameters for it (-O0 did not);
  tests/test_train_step.py::test_init_is_bit_identical_to_a_default_compile
  checks this on the tests' small WRN. The init runs once a run, so its code
  speed is irrelevant. Other backends keep
  their defaults (the option's meaning differs there).
  """
  if jax.default_backend() == 'cpu':
    return {'xla_backend_optimization_level': 1}
  return {}
