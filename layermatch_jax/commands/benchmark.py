"""Times the pieces of a training step, so a bottleneck can be named.

  layermatch-benchmark --config=configs/cifar10.py --steps=20 [--part=all]
      [--compare=fixmatch,layermatch] [--config.KEY=VALUE ...]
  (from a checkout also: python tools/benchmark.py ...)

Parts:
  input    the host pipeline (needs the config's dataset): images/s it delivers.
  augment  the on-device weak + strong views of one global batch.
  step     the full pmapped train step (augmentation included), after compilation.
  all      the three above.

`augment` and `step` run on random uint8 batches of the config's shape (real
shapes, no dataset needed). The last line printed is one JSON object: for one
algorithm its fields, with --compare one object per algorithm keyed by name plus
"overhead" (second / first step_ms, e.g. layermatch over fixmatch).
"""

import functools
import json
import resource
import statistics
import sys
import time
from typing import Optional

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from layermatch_jax import cli_util
from layermatch_jax import data, parallel, views
from layermatch_jax.learner import Learner
from layermatch_jax import train_step as train_step_lib
from layermatch_jax.train_step import StepConfig

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/NAME.py).', lock_config=True
)
flags.DEFINE_integer('steps', 20, 'Timed steps (after warm-up).')
flags.DEFINE_enum(
  'part', 'step', ['input', 'augment', 'step', 'all'], 'What to time.'
)
flags.DEFINE_string(
  'compare',
  None,
  'Comma-separated algorithms timed in one process, '
  'interleaved, e.g. fixmatch,layermatch.',
)
flags.mark_flags_as_required(['config'])


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def device_memory_mb():
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else peak / 2**20


def random_batch(
  config, image_shape, num_devices, num_classes, pool_size, seed=0
):
  """A global batch of the config's shape, sharded [devices, per_device, ...]."""
  rng = np.random.default_rng(seed)
  b = config.batch_size // num_devices
  u = b * config.uratio
  return dict(
    labeled_image=rng.integers(
      0, 256, (num_devices, b, *image_shape), dtype=np.uint8
    ),
    labeled_label=rng.integers(
      0, num_classes, (num_devices, b), dtype=np.int32
    ),
    labeled_index=rng.integers(0, pool_size, (num_devices, b), dtype=np.int32),
    unlabeled_image=rng.integers(
      0, 256, (num_devices, u, *image_shape), dtype=np.uint8
    ),
    unlabeled_label=rng.integers(
      0, num_classes, (num_devices, u), dtype=np.int32
    ),
    unlabeled_index=rng.integers(
      0, pool_size, (num_devices, u), dtype=np.int32
    ),
  )


# Classes and unlabeled pool sizes of the datasets, so that `augment` and `step`
# need no prepared data.
KNOWN = {
  'cifar10': (10, 50000),
  'cifar100': (100, 50000),
  'stl10': (10, 105000),
  'imagenet100': (100, 128000),
  'digits': (10, 1437),
}


def _shape_of(config):
  """(num_classes, image_shape, unlabeled_pool_size), loading only unknown sources."""
  if config.data.name in KNOWN:
    num_classes, pool = KNOWN[config.data.name]
    return (
      num_classes,
      (config.data.image_size, config.data.image_size, 3),
      pool,
    )
  source = data.load_source(config.data)
  return (
    source.num_classes,
    source.image_shape,
    data.unlabeled_pool_size(source),
  )


def time_input(config, steps):
  source = data.load_source(config.data)
  split = data.make_split(source, config.data.num_labels, config.seed)
  iterator = data.make_train_iterator(
    source, split, config, num_devices=jax.local_device_count()
  )
  return dict(input_img_per_sec=data.measure_throughput(iterator, steps))


def time_augment(config, steps, num_classes, image_shape, pool_size):
  n = jax.local_device_count()
  sc = StepConfig.from_config(config, num_classes)
  batch = random_batch(config, image_shape, n, num_classes, pool_size)
  rng = parallel.replicate(jax.random.key_data(jax.random.key(0)))
  fn = jax.pmap(
    lambda r, s, b: views.make_views(r, s, b, sc), axis_name=sc.axis_name
  )
  step = parallel.replicate(jax.numpy.zeros((), jax.numpy.int32))
  t = time.perf_counter()
  jax.block_until_ready(fn(rng, step, batch))
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn(rng, step, batch))
    times.append(time.perf_counter() - t)
  images = config.batch_size * (1 + 2 * config.uratio)  # views made per step
  ms = statistics.median(times) * 1e3
  return dict(
    augment_ms=ms,
    augment_img_per_sec=images / (ms / 1e3),
    augment_compile_s=compile_s,
  )


def _xla_memory_mb(compiled) -> Optional[float]:
  """Arguments + outputs + temporaries - aliased, from XLA's memory analysis."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001  # Not every backend has it.
    return None
  if m is None:
    return None
  total = (
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    + m.temp_size_in_bytes
    - m.alias_size_in_bytes
  )
  return total / 2**20


def _xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


class StepTimer:
  """One config's train step, compiled ahead for a batch already on the devices
  (as the trainer's prefetch delivers them) and timed one call at a time, so
  that several can be interleaved.

  `use_views=True` times the step on ready views (no augmentation inside).
  """

  def __init__(
    self, config, num_classes, image_shape, pool_size, use_views=False
  ):
    self.config = config
    self.learner = Learner(
      config, num_classes, image_shape, unlabeled_pool_size=pool_size
    )
    self.state = self.learner.init_state()
    self.batch = parallel.put_sharded(
      random_batch(
        config, image_shape, self.learner.num_devices, num_classes, pool_size
      ),
      self.learner.devices,
    )
    sc = self.learner.step_config
    if use_views:
      make = jax.pmap(
        lambda r, s, b: views.make_views(r, s, b, sc), axis_name=sc.axis_name
      )
      self.batch = make(self.state.rng, self.state.step, self.batch)
      fn = self.learner.pmapped_fn(
        ('views_step', False),
        functools.partial(train_step_lib.train_step, sc=sc),
      )
    else:
      fn = self.learner.step_fn(grad_norms_by_term=False)
    lowered = fn.lower(self.state, self.batch)
    t = time.perf_counter()
    # Timed steps call this executable: calling the pmapped function instead
    # would compile the step a second time.
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t
    self.flops = _xla_flops(self.compiled)
    self.memory_mb = _xla_memory_mb(self.compiled)
    # Supervised training does not forward the unlabeled batch.
    forwarded = 0 if config.algorithm == 'supervised' else config.uratio
    self.images = config.batch_size * (1 + forwarded)
    self.times = []
    self.run()  # The first execution is not timed.
    self.times.clear()

  def run(self, batch=None):
    """One step, waited for; its seconds are appended to `times`."""
    t = time.perf_counter()
    self.state, metrics = self.compiled(
      self.state, self.batch if batch is None else batch
    )
    jax.block_until_ready(metrics)
    self.times.append(time.perf_counter() - t)

  def pipelined_ms(self, steps: int, batches=None) -> float:
    """ms per step over `steps` dispatched back to back (from `batches` if
    given), one wait at the end: the training loop's rate."""
    metrics = None
    t = time.perf_counter()
    for _ in range(steps):
      batch = self.batch if batches is None else next(batches)
      self.state, metrics = self.compiled(self.state, batch)
    jax.block_until_ready((self.state, metrics))
    return (time.perf_counter() - t) / steps * 1e3

  def result(self):
    ms = statistics.median(self.times) * 1e3
    return dict(
      img_per_sec=self.images / (ms / 1e3),
      step_ms=ms,
      compile_s=self.compile_s,
      flops_per_step=self.flops,
      device=jax.devices()[0].device_kind,
      num_devices=self.learner.num_devices,
      dtype=self.config.model.dtype,
      peak_host_rss_mb=_peak_rss_mb(),
      peak_device_memory_mb=device_memory_mb(),
    )


def main(argv):
  del argv
  config = FLAGS.config
  num_classes, image_shape, pool = _shape_of(config)
  if FLAGS.compare:
    names = FLAGS.compare.split(',')
    timers = {}
    for name in names:
      c = config.copy_and_resolve_references()
      c.unlock()
      c.algorithm = name
      timers[name] = StepTimer(c, num_classes, image_shape, pool)
    for _ in range(
      FLAGS.steps
    ):  # Interleaved: drifts in machine load hit all alike.
      for timer in timers.values():
        timer.run()
    out = {name: timer.result() for name, timer in timers.items()}
    out['overhead'] = out[names[-1]]['step_ms'] / out[names[0]]['step_ms']
    for name in names:
      print(
        f'{name}: {out[name]["step_ms"]:.1f} ms/step, {out[name]["img_per_sec"]:.0f} img/s',
        flush=True,
      )
    print(json.dumps(out))
    return
  out = dict(
    algorithm=config.algorithm,
    model=config.model.name,
    batch_size=config.batch_size,
    uratio=config.uratio,
  )
  if FLAGS.part in ('input', 'all'):
    out.update(time_input(config, FLAGS.steps))
  if FLAGS.part in ('augment', 'all'):
    out.update(
      time_augment(config, FLAGS.steps, num_classes, image_shape, pool)
    )
  if FLAGS.part in ('step', 'all'):
    timer = StepTimer(config, num_classes, image_shape, pool)
    for _ in range(FLAGS.steps):
      timer.run()
    out.update(timer.result())
  out.setdefault('device', jax.devices()[0].device_kind)
  out.setdefault('num_devices', jax.local_device_count())
  out['peak_host_rss_mb'] = _peak_rss_mb()
  print(json.dumps(out))


def run(argv=None):
  """`layermatch-benchmark` (absl flags: argv=None reads sys.argv)."""
  cli_util.import_configs()  # The --config file starts from `from configs import default`.
  # absl's --help prints the __main__ module's docstring: a shim's or none.
  sys.modules['__main__'].__doc__ = __doc__
  app.run(main, argv=None if argv is None else [sys.argv[0], *argv])
