"""Evaluation: EMA parameters with the live BatchNorm running statistics."""

import jax
import jax.numpy as jnp

from layermatch_jax import views as views_lib
from layermatch_jax.state import TrainState


def predict(state: TrainState, images, mean, std, use_ema: bool = True):
  """Logits for uint8 images [N, H, W, C]."""
  x = views_lib.normalize(views_lib.to_unit_float(images), mean, std)
  params = state.ema_params if use_ema else state.params
  _, logits = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, x,
                             train=False)
  return logits


def eval_step(state: TrainState, batch, mean, std, axis_name='batch'):
  """Counts over a padded batch {image, label, mask}, summed over devices.

  Returns {'correct', 'count', 'loss_sum'} and the predictions.
  """
  logits = predict(state, batch['image'], mean, std)
  mask = batch['mask'].astype(jnp.float32)
  pred = jnp.argmax(logits, -1)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['label'][:, None], -1)[:, 0]
  sums = dict(correct=jnp.sum((pred == batch['label']) * mask), count=jnp.sum(mask),
              loss_sum=jnp.sum(ce * mask))
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums, pred
