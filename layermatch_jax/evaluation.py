"""Evaluation: EMA parameters with the live BatchNorm running statistics."""

import jax
import numpy as np
import jax.numpy as jnp

from layermatch_jax import views as views_lib
from layermatch_jax.parallel import AXIS
from layermatch_jax.state import TrainState


def features_and_logits(
  state: TrainState, images, mean, std, use_ema: bool = True
):
  """(features z, logits) for uint8 images [N, H, W, C], in evaluation mode."""
  x = views_lib.normalize(views_lib.to_unit_float(images), mean, std)
  params = state.ema_params if use_ema else state.params
  return state.apply_fn(
    {'params': params, 'batch_stats': state.batch_stats}, x, train=False
  )


def predict(state: TrainState, images, mean, std, use_ema: bool = True):
  """Logits for uint8 images [N, H, W, C]."""
  return features_and_logits(state, images, mean, std, use_ema)[1]


def eval_step(state: TrainState, batch, mean, std, axis_name=AXIS):
  """Counts over a padded batch {image, label, mask}, summed over devices.

  Returns {'correct', 'count', 'loss_sum'} and the predictions.
  """
  logits = predict(state, batch['image'], mean, std)
  mask = batch['mask'].astype(jnp.float32)
  pred = jnp.argmax(logits, -1)
  ce = -jnp.take_along_axis(
    jax.nn.log_softmax(logits), batch['label'][:, None], -1
  )[:, 0]
  sums = dict(
    correct=jnp.sum((pred == batch['label']) * mask),
    count=jnp.sum(mask),
    loss_sum=jnp.sum(ce * mask),
  )
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums, pred


def eval_step_fn(learner):
  """The learner's pmapped eval_step: fn(state, eval_inputs(batch)) -> (sums, predictions)."""
  sc = learner.step_config
  return learner.pmapped_fn(
    'eval', lambda st, b: eval_step(st, b, sc.mean, sc.std), donate_state=False
  )


def eval_inputs(batch) -> dict:
  return {k: batch[k] for k in ('image', 'label', 'mask')}


def evaluate_dataset(
  learner, state: TrainState, batches, return_predictions: bool = False
):
  """Top-1 and mean loss over padded eval batches ({image, label, mask}, sharded).

  With `return_predictions`, also the predictions and labels of every real
  (unpadded) example, in order, for per-class accuracy and confusion matrices.
  """
  step = eval_step_fn(learner)
  correct = count = loss_sum = 0.0
  preds, labels = [], []
  for batch in batches:
    sums, pred = step(state, eval_inputs(batch))
    sums = learner.host(sums)
    correct += float(sums['correct'])
    count += float(sums['count'])
    loss_sum += float(sums['loss_sum'])
    if return_predictions:
      mask = np.asarray(batch['mask']).reshape(-1)
      preds.append(np.asarray(pred).reshape(-1)[mask])
      labels.append(np.asarray(batch['label']).reshape(-1)[mask])
  result = dict(
    top1=correct / max(count, 1.0),
    loss=loss_sum / max(count, 1.0),
    count=int(count),
  )
  if return_predictions:
    result.update(
      predictions=np.concatenate(preds), labels=np.concatenate(labels)
    )
  return result
