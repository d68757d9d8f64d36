"""Optimizer of the classic SSL recipe: SGD + Nesterov, FixMatch cosine, masked decay."""

import jax
import jax.numpy as jnp
import optax


def fixmatch_cosine_schedule(
  base_lr: float, total_steps: int
) -> optax.Schedule:
  """lr(k) = base_lr * cos(7 pi k / (16 K)).

  Written out because optax's cosine_decay_schedule is 0.5 (1 + cos(pi k / K)),
  which decays to zero; FixMatch's ends at cos(7 pi / 16) ~ 0.2 of the base.
  """

  def schedule(step):
    return base_lr * jnp.cos(7.0 * jnp.pi * step / (16.0 * total_steps))

  return schedule


def kernel_mask(params):
  """True for conv/dense kernels: weight decay skips BatchNorm and biases."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params
  )


def make_optimizer(
  optim_config, total_steps: int
) -> optax.GradientTransformation:
  schedule = fixmatch_cosine_schedule(optim_config.learning_rate, total_steps)
  return optax.chain(
    # Decay is added to the gradient before SGD, as torch.optim.SGD does in
    # the reference implementations (coupled L2, scaled by the lr).
    optax.masked(
      optax.add_decayed_weights(optim_config.weight_decay), kernel_mask
    ),
    optax.sgd(
      schedule, momentum=optim_config.momentum, nesterov=optim_config.nesterov
    ),
  )
