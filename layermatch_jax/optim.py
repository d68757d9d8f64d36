"""Optimizers: the classic SSL recipe (SGD + Nesterov, FixMatch cosine, decay on
kernels only) and USB's ViT fine-tuning recipe (AdamW, layer-wise lr decay,
linear warm-up), selected by `optim.name`.

Both follow USB (microsoft/Semi-supervised-learning, semilearn/core/utils/
build.py and semilearn/nets/utils.py): one schedule for every optimizer, a
linear warm-up then the FixMatch cosine over the remaining steps; weight decay
only on kernels; a ViT's layer-wise decay as a per-leaf multiple of the lr.
"""

import re

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('sgd', 'adamw')


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


def warmup_cosine_schedule(
  base_lr: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
  """USB's get_cosine_schedule_with_warmup: base_lr * k / W for k < W, then
  base_lr * max(0, cos(7 pi (k - W) / (16 (K - W)))).

  Step 0 of a warm-up has lr 0 (as in USB, whose LambdaLR gives step k the
  factor k / W). W = 0 is exactly fixmatch_cosine_schedule, the same function,
  so runs without warm-up stay bit-identical to before.
  """
  if warmup_steps == 0:
    return fixmatch_cosine_schedule(base_lr, total_steps)
  cosine_steps = max(1, total_steps - warmup_steps)

  def schedule(step):
    warm = base_lr * step / warmup_steps
    progress = (step - warmup_steps) / cosine_steps
    cosine = base_lr * jnp.maximum(0.0, jnp.cos(7.0 * jnp.pi * progress / 16.0))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
  """The base learning rate at each step (before any layer-wise scale)."""
  return warmup_cosine_schedule(
    optim_config.learning_rate, total_steps, optim_config.warmup_steps
  )


def _names(path):
  return tuple(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def kernel_mask(params):
  """True for conv/dense kernels: weight decay skips BatchNorm and biases.

  In a ViT (models/vit.py) the same rule leaves decay on the patch embedding's,
  attention's, MLP's and head's kernels and skips every bias, the LayerNorms'
  scale and bias, `cls` and `Transformer/posembed_input/pos_embedding`: the
  split of USB's ViT optimizer (no decay for 1-d tensors, `cls_token` and
  `pos_embed`).
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, _: getattr(path[-1], 'key', None) == 'kernel', params
  )


_BLOCK = re.compile(r'encoderblock_(\d+)$')


def vit_layer_id(path, depth: int) -> int:
  """The layer of a Classifier's ViT parameter for layer-wise lr decay.

  0: `embedding`, `cls`, `Transformer/posembed_input`; i + 1:
  `Transformer/encoderblock_i`; depth: `Transformer/encoder_norm` (USB's ViT
  groups the final norm with the last block, timm's MATCH_PREV_GROUP);
  depth + 1: the `head`. `path`: names, with or without a leading 'backbone'.
  """
  names = tuple(path)
  if names[:1] == ('backbone',):
    names = names[1:]
  if names[:1] == ('head',):
    return depth + 1
  if names[:1] in (('embedding',), ('cls',)):
    return 0
  if names[:1] == ('Transformer',) and len(names) > 1:
    if names[1] == 'posembed_input':
      return 0
    if names[1] == 'encoder_norm':
      return depth
    block = _BLOCK.match(names[1])
    if block:
      return int(block.group(1)) + 1
  raise ValueError(
    f'layer-wise lr decay (optim.layer_decay) is defined for ViTs '
    f"(models/vit.py); parameter {'/'.join(path)} is not a ViT's"
  )


def layer_scales(params, layer_decay: float):
  """A tree like `params` of layer_decay ** (depth + 1 - layer_id), Python floats."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  # L: how many distinct encoderblock_i the tree holds.
  depth = len({n for p, _ in leaves for n in _names(p) if _BLOCK.match(n)})
  return jax.tree_util.tree_map_with_path(
    lambda path, _: float(
      layer_decay ** (depth + 1 - vit_layer_id(_names(path), depth))
    ),
    params,
  )


def scale_by_layer(layer_decay: float) -> optax.GradientTransformation:
  """Each leaf's update times its layer's scale: a per-layer learning rate.

  As the last transformation this is exactly USB's per-group lr: SGD's and
  AdamW's updates (decoupled decay included) are linear in the lr, and their
  state (momentum, moments) does not depend on it.
  """

  def update_fn(updates, state, params=None):
    del params
    scales = layer_scales(updates, layer_decay)
    return jax.tree.map(lambda u, s: u * s, updates, scales), state

  return optax.GradientTransformation(
    lambda params: optax.EmptyState(), update_fn
  )


def make_optimizer(
  optim_config, total_steps: int
) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_config, total_steps)
  if optim_config.name == 'sgd':
    tx = optax.chain(
      # Decay is added to the gradient before SGD, as torch.optim.SGD does in
      # the reference implementations (coupled L2, scaled by the lr).
      optax.masked(
        optax.add_decayed_weights(optim_config.weight_decay), kernel_mask
      ),
      optax.sgd(
        schedule,
        momentum=optim_config.momentum,
        nesterov=optim_config.nesterov,
      ),
    )
  elif optim_config.name == 'adamw':
    # torch.optim.AdamW's update (USB's): decay decoupled from the moments and
    # scaled by the lr, p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p).
    tx = optax.adamw(
      schedule,
      b1=optim_config.adam_b1,
      b2=optim_config.adam_b2,
      eps=optim_config.adam_eps,
      weight_decay=optim_config.weight_decay,
      mask=kernel_mask,
    )
  else:
    raise ValueError(
      f'optim.name={optim_config.name!r} is not one of {list(OPTIMIZERS)}'
    )
  if optim_config.layer_decay != 1.0:
    tx = optax.chain(tx, scale_by_layer(optim_config.layer_decay))
  return tx
