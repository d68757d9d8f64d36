"""A small API over the pure step, for notebooks and the trainer.

  learner = Learner(config, num_classes=10, image_shape=(32, 32, 3))
  state = learner.init_state()
  state, metrics = learner.step(state, batch)   # a pipeline batch, or a global one
  grads = learner.gradients(state, batch)       # {'sup'|'unsup'|'cluster': {'backbone', 'head'}}

A batch is either what data.make_train_iterator yields (arrays laid out
[devices, per-device batch, ...]) or global host arrays [batch, ...], which the
Learner splits over its devices.

States returned by the Learner are replicated over its devices; `learner.host(state)`
gives one copy as numpy arrays. Steps donate the state passed in: keep only the
returned one.
"""

import functools
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from layermatch_jax import evaluation, models, optim, parallel
from layermatch_jax import views as views_lib
from layermatch_jax import train_step as train_step_lib
from layermatch_jax.state import TrainState, create_train_state


def _is_raw_batch(batch) -> bool:
  return 'labeled_image' in batch


def _is_sharded(batch) -> bool:
  """Whether the batch's images already have the device axis: [D, B, H, W, C]."""
  images = batch['labeled_image'] if _is_raw_batch(batch) else batch['x_l']
  return np.ndim(images) == 5


class Learner:
  """Model, optimizer and pmapped steps built from one config."""

  def __init__(
    self,
    config,
    num_classes: int,
    image_shape: Sequence[int],
    devices: Optional[Sequence[jax.Device]] = None,
    unlabeled_pool_size: Optional[int] = None,
  ):
    """`unlabeled_pool_size` (data.unlabeled_pool_size(source)) is needed by the
    FlexMatch policy, which records a prediction per unlabeled image."""
    self.config = config
    self.num_classes = num_classes
    self.unlabeled_pool_size = unlabeled_pool_size
    self.image_shape = tuple(image_shape)
    self.devices = list(devices or jax.local_devices())
    self.model = models.create_model(
      config.model, num_classes, axis_name=parallel.AXIS
    )
    self.tx = optim.make_optimizer(config.optim, config.num_train_steps)
    self.step_config = train_step_lib.StepConfig.from_config(
      config, num_classes
    )
    self._compiled = {}

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def init_host_state(
    self, seed: Optional[int] = None, pretrained: bool = True
  ) -> TrainState:
    """A fresh, unreplicated state from `seed` (default config.seed).

    With `pretrained` and model.init_from set, the backbone comes from that
    file; a resume passes False (the checkpoint replaces it anyway).
    """
    seed = self.config.seed if seed is None else seed
    init_from = self.config.model.get('init_from') if pretrained else None
    return create_train_state(
      self.model,
      self.tx,
      jax.random.key(seed),
      self.image_shape,
      self.num_classes,
      policy=self.step_config.pseudo_label.name,
      unlabeled_pool_size=self.unlabeled_pool_size,
      init_from=init_from,
      posemb_resize=self.config.model.get('posemb_resize', 'bilinear'),
    )

  def init_state(self, seed: Optional[int] = None) -> TrainState:
    """A fresh state from `seed` (default config.seed), replicated over devices."""
    return self.replicate(self.init_host_state(seed))

  def replicate(self, host_state: TrainState) -> TrainState:
    return parallel.replicate(host_state, self.devices)

  def host(self, tree):
    """One device's copy of a replicated tree, as host arrays."""
    return parallel.unreplicate(tree)

  def pmapped_fn(self, name, fn, donate_state=True):
    """fn pmapped over the learner's devices, built once per `name`."""
    if name not in self._compiled:
      self._compiled[name] = parallel.pmap(
        fn, self.devices, donate_state=donate_state
      )
    return self._compiled[name]

  def _shard(self, batch, sharded: Optional[bool] = None):
    """The batch laid out [devices, per-device batch, ...]; `sharded` None: detect."""
    if sharded is None:
      sharded = _is_sharded(batch)
    return batch if sharded else parallel.shard(batch, self.num_devices)

  def step(
    self,
    state: TrainState,
    batch,
    grad_norms_by_term: bool = False,
    sharded: Optional[bool] = None,
  ):
    """One train step on a host batch: uint8 images (as the pipeline makes) or
    ready views (x_l, y_l, x_w, x_s, y_u); sharded ([devices, per-device, ...],
    as the pipeline yields) or global. `sharded` None tells them apart by rank.

    Returns the new (replicated) state and the step's metrics as floats.
    """
    if _is_raw_batch(batch):
      fn = self.step_fn(grad_norms_by_term)
    else:
      fn = self.pmapped_fn(
        ('views_step', grad_norms_by_term),
        functools.partial(
          train_step_lib.train_step,
          sc=self.step_config,
          grad_norms_by_term=grad_norms_by_term,
        ),
      )
    state, metrics = fn(state, self._shard(batch, sharded))
    return state, {k: float(v) for k, v in self.host(metrics).items()}

  def step_fn(self, grad_norms_by_term: bool = False):
    """The pmapped step on sharded uint8 batches: fn(state, batch) -> (state, metrics),
    metrics left on device (the training loop fetches them when it logs)."""
    return self.pmapped_fn(
      ('step', grad_norms_by_term),
      functools.partial(
        train_step_lib.train_step_on_batch,
        sc=self.step_config,
        grad_norms_by_term=grad_norms_by_term,
      ),
    )

  def gradients(
    self, state: TrainState, batch, sharded: Optional[bool] = None
  ) -> Dict[str, Dict[str, dict]]:
    """This step's gradient split by loss term and subtree, without updating.

    Keys 'sup', 'unsup', 'cluster' (and 'fairness' for FreeMatch; each weighted
    as in the total loss, with the head's pseudo-label share already scaled by
    alpha) and 'total'.
    """
    sc = self.step_config

    def grads_fn(st, b):
      views = (
        views_lib.make_views(st.rng, st.step, b, sc) if _is_raw_batch(b) else b
      )
      return train_step_lib.term_gradients(st, views, sc)[0]

    grads = self.host(
      self.pmapped_fn(
        ('grads', _is_raw_batch(batch)), grads_fn, donate_state=False
      )(state, self._shard(batch, sharded))
    )
    grads['total'] = jax.tree.map(
      lambda *g: sum(g), *[grads[t] for t in sc.terms]
    )
    return grads

  def predict(
    self, state: TrainState, images, use_ema: bool = True
  ) -> np.ndarray:
    """Logits for uint8 images [N, H, W, C] (N divisible by the device count)."""
    sc = self.step_config
    fn = self.pmapped_fn(
      ('predict', use_ema),
      lambda st, x: evaluation.predict(st, x, sc.mean, sc.std, use_ema=use_ema),
      donate_state=False,
    )
    logits = np.asarray(fn(state, parallel.shard(images, self.num_devices)))
    return logits.reshape(-1, logits.shape[-1])

  def accuracy(
    self, state: TrainState, images, labels, batch_size: int = 512
  ) -> float:
    """Top-1 of the EMA parameters; pads the last batch to the device count."""
    correct = 0
    for start in range(0, len(images), batch_size):
      x = images[start : start + batch_size]
      pad = (-len(x)) % self.num_devices
      if pad:
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
      pred = self.predict(state, x).argmax(-1)[: len(x) - pad]
      correct += int(np.sum(pred == labels[start : start + batch_size]))
    return correct / len(images)
