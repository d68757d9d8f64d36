"""What this trainer does on a GPU or TPU, in one command: speed, memory, MFU,
LayerMatch's cost over FixMatch, bf16, the input pipeline, a PyTorch peer, and
a short learning run.

  layermatch-accelerator-benchmark --out=accelerator.json \
      --data=../shared/data/cifar10-jpeg.tar.gz          # about 8 minutes on one GPU
  layermatch-accelerator-benchmark --preset=cpu --out=cpu.json   # the CPU budget's shapes
  layermatch-accelerator-benchmark --preset=quick --out=q.json   # toy sizes, CPU, < 1 min
  (from a checkout also python tools/accelerator_benchmark.py ...; benchmarks/accelerator.sh
  checks the environment first and then runs this)

Presets (--preset):
  accelerator  WRN-28-2 at CIFAR-10 shapes and WRN-28-8 at CIFAR-100 shapes (32 px,
               B = 64 labeled + 7 x 64 unlabeled, weak + strong views), float32 and
               bfloat16, supervised / FixMatch / LayerMatch; then a learning run
               (CIFAR-10 folder, WRN-28-2, 40 labels, --learn_seconds of training).
  cpu          WRN-10-1 at the CPU budget's shapes (16 px, B = 32 + 4 x 32), same rest;
               the learning run only if --learn_seconds > 0.
  quick        WRN-10-1 at 8 px, 2 timed steps, a 24-step learning run on the digits:
               every code path at toy sizes (tests/test_accelerator_benchmark.py).

The JSON file (--out, written whole at the end and after each section, so a run
cut short keeps what it measured) has these fields:
  environment  python, jax, jaxlib, flax, optax, torch (or null), backend,
               device_kind, device_count, process_count, host_cpus, commit, date, preset.
  steps        one row per (case, dtype, algorithm), timed interleaved per
               (case, dtype) in one process. What was timed: case, model,
               image_size, batch_size (B, labeled), uratio (mu), dtype, algorithm,
               num_devices; and
                 step_ms / step_ms_p90  one step at a time, waiting for its result
                                        (median / 90th percentile of --steps);
                 pipelined_step_ms      --steps steps dispatched back to back, one wait:
                                        the training loop's rate;
                 img_per_sec            (B + mu B) / pipelined step time (B for
                                        supervised, which skips the unlabeled batch);
                 compile_s, flops_per_step (XLA's cost analysis of the whole step),
                 tflops_per_sec (achieved), peak_tflops (the device's, for the dtype,
                 null where unknown: CPUs), mfu (achieved / peak),
                 xla_memory_mb (arguments + outputs + temporaries - aliased, from
                 XLA's memory analysis of the step), peak_device_memory_mb (the
                 process's peak so far; null where the backend has no memory stats).
  overhead     per (case, dtype): layermatch / fixmatch pipelined step time.
  input        for the first case, float32, LayerMatch: augment_ms (the weak and strong
               views of a global batch on their own), step_no_augment_ms (the step on
               ready views), augment_share, host_img_per_sec (the host pipeline alone,
               host_source: the --data folder or in-memory arrays), device_img_per_sec,
               fed_step_ms (steps fed by the real pipeline through the device
               prefetch), device_step_ms (the same step on one batch already on the
               device) and host_gap (fed / device - 1: the step's wait for input).
  projection   per dtype: hours for a 2^20-step run of the first case's LayerMatch at
               its pipelined rate.
  peer         when torch imports: benchmarks/peers/torch_fixmatch_step.py (USB's
               FixMatch step in eager PyTorch, channels_last; bf16 is autocast) at the
               first case's shapes per dtype, on the same kind of device, one step
               at a time as step_ms: pytorch_step_ms, project_step_ms (FixMatch),
               ratio = project / PyTorch, project_step_no_augment_ms and
               ratio_no_augment (the project's step on ready views: USB augments
               in its data loader, off the step), pytorch (the peer's own JSON).
               Otherwise {"skipped": why}.
  learning     data, model, num_labels, steps, seconds, evals ([step, top1] pairs),
               final_top1, chance; or {"skipped": why}.
  wall_s       seconds each section took (steps, input, peer, learning).
--cases, --dtypes and --algorithms run a subset of the preset's (e.g. to fit a
time limit). Within a (case, dtype), the algorithms' steps compile side by side
in threads: compile_s is each one's wall time while the others compile too.
A table of the same numbers is printed at the end. Bad input: one `error:` line,
exit status 2.
"""

from concurrent import futures
import dataclasses
import datetime
import importlib
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Optional

import jax
import numpy as np

from layermatch_jax import cli_util, data, prefetch
from layermatch_jax import metrics as metrics_lib
from layermatch_jax import train as train_lib
from layermatch_jax.commands import benchmark as step_benchmark
from layermatch_jax.commands import learning_benchmark

PEER = os.path.join(
  cli_util.CHECKOUT, 'benchmarks', 'peers', 'torch_fixmatch_step.py'
)
PROJECTED_STEPS = 2**20

# Dense peak TFLOP/s from the vendors' data sheets, by a piece of
# jax.Device.device_kind. float32 on NVIDIA is the TF32 tensor-core peak: XLA's
# default precision lets float32 convolutions run in TF32 there. TPUs run
# float32 matrix products at default precision as bfloat16 passes.
PEAK_TFLOPS = (
  ('H200', {'bfloat16': 989.0, 'float32': 494.0}),
  ('H100', {'bfloat16': 989.0, 'float32': 494.0}),
  ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
  ('L4', {'bfloat16': 121.0, 'float32': 60.0}),
  ('TPU v6', {'bfloat16': 918.0, 'float32': 918.0}),
  ('TPU v5p', {'bfloat16': 459.0, 'float32': 459.0}),
  ('TPU v5', {'bfloat16': 197.0, 'float32': 197.0}),  # v5e ('TPU v5 lite').
  ('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}),
)


@dataclasses.dataclass(frozen=True)
class Case:
  """A model at a dataset's shapes."""

  name: str
  model: str
  num_classes: int
  image_size: int
  batch_size: int
  uratio: int
  bn_momentum: float = 0.999


@dataclasses.dataclass(frozen=True)
class Preset:
  cases: tuple
  dtypes: tuple
  algorithms: tuple
  steps: int
  learn_config: str  # 'folder' (needs --data) or 'demo' (the digits).
  learn_seconds: float
  learn_steps: Optional[int] = None  # Fixed, instead of from the seconds.
  host_pool: int = 50000  # In-memory images when no --data is given.


PRESETS = {
  'accelerator': Preset(
    cases=(
      Case('wrn28_2-cifar10', 'wrn28_2', 10, 32, 64, 7),
      Case('wrn28_8-cifar100', 'wrn28_8', 100, 32, 64, 7),
    ),
    dtypes=('float32', 'bfloat16'),
    algorithms=('supervised', 'fixmatch', 'layermatch'),
    steps=30,
    learn_config='folder',
    learn_seconds=180.0,
  ),
  'cpu': Preset(
    cases=(Case('wrn10_1-cifar10-16px', 'wrn10_1', 10, 16, 32, 4, 0.99),),
    dtypes=('float32', 'bfloat16'),
    algorithms=('supervised', 'fixmatch', 'layermatch'),
    steps=20,
    learn_config='folder',
    learn_seconds=0.0,
  ),
  'quick': Preset(
    cases=(Case('wrn10_1-8px', 'wrn10_1', 10, 8, 8, 2, 0.99),),
    dtypes=('float32', 'bfloat16'),
    algorithms=('supervised', 'fixmatch', 'layermatch'),
    steps=2,
    learn_config='demo',
    learn_seconds=0.0,
    learn_steps=24,
    host_pool=512,
  ),
}


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--out', required=True, help='The JSON file to write.')
  parser.add_argument(
    '--preset', default='accelerator', choices=sorted(PRESETS)
  )
  parser.add_argument(
    '--data',
    default=None,
    help='CIFAR-10 as a folder or its .tar.gz (the learning run and the host '
    'pipeline); without it the host pipeline reads in-memory arrays and the '
    'accelerator learning run is skipped',
  )
  parser.add_argument(
    '--unpack_dir', default=os.path.join(tempfile.gettempdir(), 'cifar10')
  )
  parser.add_argument('--steps', type=int, default=None, help='Timed steps.')
  parser.add_argument(
    '--learn_seconds',
    type=float,
    default=None,
    help="Training time of the learning run (0: none); default the preset's",
  )
  for name in ('cases', 'dtypes', 'algorithms'):
    parser.add_argument(
      f'--{name}',
      default=None,
      help=f"Comma-separated subset of the preset's {name} (default: all)",
    )
  parser.add_argument(
    '--peer',
    default='auto',
    choices=('auto', 'off'),
    help='auto: time the PyTorch peer when torch imports',
  )
  args = parser.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    raise cli_util.ToolError(f'--steps={args.steps} is not valid: use >= 1')
  if args.learn_seconds is not None and args.learn_seconds < 0:
    raise cli_util.ToolError(
      f'--learn_seconds={args.learn_seconds} is not valid: use a number >= 0'
    )
  preset = PRESETS[args.preset]
  for name in ('cases', 'dtypes', 'algorithms'):
    known = getattr(preset, name)
    if name == 'cases':
      known = tuple(c.name for c in known)
    value = getattr(args, name)
    chosen = known if value is None else tuple(value.split(','))
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
      raise cli_util.ToolError(
        f'--{name}={value} is not valid for --preset={args.preset}: use a '
        f'comma-separated subset of {",".join(known)}'
      )
    setattr(args, name, chosen)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    raise cli_util.ToolError(
      f'--out={args.out}: the folder {out_dir} does not exist'
    )
  return args


# --------------------------------------------------------------------------
# Environment.


def _version(module: str):
  try:
    return importlib.import_module(module).__version__
  except Exception:  # noqa: BLE001  # Absent or broken: reported as null.
    return None


def environment(preset_name: str) -> dict:
  device = jax.devices()[0]
  return dict(
    python=platform.python_version(),
    jax=jax.__version__,
    jaxlib=_version('jaxlib'),
    flax=_version('flax'),
    optax=_version('optax'),
    torch=_version('torch') if importlib.util.find_spec('torch') else None,
    backend=jax.default_backend(),
    device_kind=device.device_kind,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
    host_cpus=os.cpu_count(),
    commit=learning_benchmark._commit(),
    date=datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    preset=preset_name,
  )


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  for piece, peaks in PEAK_TFLOPS:
    if piece.lower() in device_kind.lower():
      return peaks[dtype]
  return None


# --------------------------------------------------------------------------
# Step timing.


def case_config(case: Case, dtype: str, algorithm: str):
  from configs import default  # The checkout's configs (import_configs).

  config = default.get_config()
  config.model.name = case.model
  config.model.dtype = dtype
  config.model.bn_momentum = case.bn_momentum
  config.data.image_size = case.image_size
  config.batch_size = case.batch_size
  config.uratio = case.uratio
  config.algorithm = algorithm
  config.grad_norms_by_term = False
  return config


def _median_p90(times):
  ordered = sorted(times)
  return (
    statistics.median(ordered) * 1e3,
    ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
  )


def _timer(config, case: Case, use_views: bool = False):
  shape = (case.image_size, case.image_size, 3)
  return step_benchmark.StepTimer(
    config, case.num_classes, shape, 50000, use_views=use_views
  )


def time_case(case: Case, dtype: str, algorithms, steps: int) -> list:
  """Rows for every algorithm at (case, dtype), timed interleaved."""
  # Compiled side by side: XLA's compiler releases the GIL, and compiling is
  # most of this benchmark's wall time on an accelerator.
  with futures.ThreadPoolExecutor(len(algorithms)) as pool:
    built = [
      pool.submit(_timer, case_config(case, dtype, a), case) for a in algorithms
    ]
    timers = dict(zip(algorithms, (b.result() for b in built)))
  for _ in range(steps):  # Interleaved: a drift in load hits all alike.
    for timer in timers.values():
      timer.run()
  kind = jax.devices()[0].device_kind
  peak = peak_tflops(kind, dtype)
  rows = []
  for algorithm, timer in timers.items():
    step_ms, p90 = _median_p90(timer.times)
    pipelined = timer.pipelined_ms(steps)
    tflops = timer.flops / (pipelined / 1e3) / 1e12
    rows.append(
      dict(
        case=case.name,
        model=case.model,
        image_size=case.image_size,
        batch_size=case.batch_size,
        uratio=case.uratio,
        dtype=dtype,
        algorithm=algorithm,
        num_devices=timer.learner.num_devices,
        step_ms=step_ms,
        step_ms_p90=p90,
        pipelined_step_ms=pipelined,
        img_per_sec=timer.images / (pipelined / 1e3),
        compile_s=timer.compile_s,
        flops_per_step=timer.flops,
        tflops_per_sec=tflops,
        peak_tflops=peak,
        mfu=None if peak is None else tflops / peak,
        xla_memory_mb=timer.memory_mb,
        peak_device_memory_mb=step_benchmark.device_memory_mb(),
      )
    )
  return rows


# --------------------------------------------------------------------------
# Input: augmentation, host pipeline, fed vs device-only steps.


def _synthetic_source(case: Case, pool: int):
  rng = np.random.default_rng(0)
  shape = (case.image_size, case.image_size, 3)
  images = rng.integers(0, 256, (pool, *shape), dtype=np.uint8)
  labels = np.arange(pool, dtype=np.int32) % case.num_classes
  records = data.ArrayRecords(images, labels)
  return data.Source(
    name='synthetic',
    num_classes=case.num_classes,
    class_names=tuple(str(c) for c in range(case.num_classes)),
    image_shape=shape,
    train=records,
    test=data.ArrayRecords(images[:10], labels[:10]),
    extra_unlabeled=data.ArrayRecords(images[:0], np.zeros((0,), np.int32)),
  )


def _folder_source(folder: str, image_size: int):
  from configs import folder as folder_config

  config = folder_config.get_config()
  config.data.dir = folder
  config.data.image_size = image_size
  return data.load_source(config.data)


def time_input(case: Case, preset: Preset, folder, steps: int) -> dict:
  config = case_config(case, 'float32', 'layermatch')
  if folder and case.num_classes == 10:
    source, host_source = _folder_source(folder, case.image_size), folder
  else:
    source = _synthetic_source(case, preset.host_pool)
    host_source = f'in-memory arrays ({preset.host_pool} images)'
  split = data.make_split(source, 10 * case.num_classes, seed=0)
  n = jax.local_device_count()
  host_ips = data.measure_throughput(
    data.make_train_iterator(source, split, config, num_devices=n), steps
  )
  augment = step_benchmark.time_augment(
    config,
    steps,
    case.num_classes,
    (case.image_size, case.image_size, 3),
    len(source.train),
  )
  timer = _timer(config, case)
  device_ms = timer.pipelined_ms(steps)
  fed = prefetch.DevicePrefetch(
    data.make_train_iterator(source, split, config, num_devices=n),
    int(config.data.device_prefetch),
  )
  timer.pipelined_ms(2, fed)  # The pipeline's threads start.
  fed_ms = timer.pipelined_ms(steps, fed)
  no_augment = _timer(config, case, use_views=True)  # Run once already.
  no_augment_ms = no_augment.pipelined_ms(steps)
  return dict(
    case=case.name,
    augment_ms=augment['augment_ms'],
    step_no_augment_ms=no_augment_ms,
    step_ms=device_ms,
    augment_share=max(0.0, 1 - no_augment_ms / device_ms),
    host_source=host_source,
    host_img_per_sec=host_ips,
    device_img_per_sec=timer.images / (device_ms / 1e3),
    fed_step_ms=fed_ms,
    device_step_ms=device_ms,
    host_gap=fed_ms / device_ms - 1,
  )


# --------------------------------------------------------------------------
# The PyTorch peer.


def _load_peer():
  spec = importlib.util.spec_from_file_location('torch_fixmatch_step', PEER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def time_peer(case: Case, dtypes, steps: int, project_rows) -> dict:
  """The PyTorch peer at `case`'s shapes next to the project's FixMatch step,
  with and without the on-device augmentation."""
  if importlib.util.find_spec('torch') is None:
    return dict(skipped='torch is not installed')
  if not os.path.isfile(PEER):
    return dict(skipped=f'{PEER} is not in this checkout')
  try:
    peer = _load_peer()
    import torch
  except Exception as e:  # noqa: BLE001  # A broken torch install: say so.
    return dict(skipped=f'torch does not import: {cli_util.one_line(e)}')
  backend = jax.default_backend()
  if backend == 'gpu' and torch.cuda.is_available():
    device = 'cuda'
  elif backend == 'cpu':
    device = 'cpu'
  else:
    return dict(skipped=f'no torch device for the {backend} backend')
  depth, widen = (int(x) for x in case.model[3:].split('_'))
  rows = []
  for dtype in dtypes:
    result = peer.time_fixmatch_step(
      depth=depth,
      widen_factor=widen,
      num_classes=case.num_classes,
      image_size=case.image_size,
      labeled=case.batch_size,
      unlabeled=case.batch_size * case.uratio,
      steps=steps,
      dtype=dtype,
      device=device,
    )
    ours = next(
      (
        r
        for r in project_rows
        if r['case'] == case.name
        and r['dtype'] == dtype
        and r['algorithm'] == 'fixmatch'
      ),
      None,
    )
    if ours is None:
      return dict(skipped='FixMatch was not timed (--algorithms)')
    on_views = _timer(case_config(case, dtype, 'fixmatch'), case, True)
    for _ in range(steps):
      on_views.run()
    no_augment_ms = _median_p90(on_views.times)[0]
    rows.append(
      dict(
        dtype=dtype,
        project_step_ms=ours['step_ms'],
        project_step_no_augment_ms=no_augment_ms,
        pytorch_step_ms=result['step_ms'],
        ratio=ours['step_ms'] / result['step_ms'],
        ratio_no_augment=no_augment_ms / result['step_ms'],
        pytorch=result,
      )
    )
  return dict(case=case.name, device=device, rows=rows)


# --------------------------------------------------------------------------
# The learning run.


def learning_run(preset: Preset, folder, seconds: float, fed_ms) -> dict:
  if preset.learn_config == 'folder':
    if not seconds:
      return dict(skipped='--learn_seconds=0')
    if not folder:
      return dict(skipped='no --data (CIFAR-10 as a folder or .tar.gz)')
    from configs import folder as folder_config

    config = folder_config.get_config()
    config.data.dir = folder
    config.data.num_labels = 40
    config.model.name = 'wrn28_2'
    steps = max(8, int(seconds / (fed_ms / 1e3)))
  else:
    from configs import demo

    config = demo.get_config()
    config.data.image_size = 8
    config.batch_size = 8
    config.uratio = 2
    steps = preset.learn_steps
  config.algorithm = 'layermatch'
  config.num_train_steps = steps
  config.eval_every_steps = max(1, steps // 4)
  config.log_every_steps = max(1, steps // 8)
  config.checkpoint_every_steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    summary = train_lib.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t
    evals = metrics_lib.read_metrics(workdir, 'eval')
  return dict(
    data=config.data.name,
    model=config.model.name,
    num_labels=config.data.num_labels,
    steps=steps,
    seconds=wall,
    evals=[[r['step'], r['top1']] for r in evals],
    final_top1=summary.get('final_top1'),
    chance=1 / 10,
  )


# --------------------------------------------------------------------------
# Report.


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def table(result: dict) -> str:
  lines = [
    f'{result["environment"]["device_kind"]} x '
    f'{result["environment"]["device_count"]}, jax {result["environment"]["jax"]}',
    '',
    '| case | dtype | algorithm | step ms | pipelined ms | img/s | compile s '
    '| TFLOP/s | MFU | XLA MiB |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in result['steps']:
    lines.append(
      f'| {r["case"]} | {r["dtype"]} | {r["algorithm"]} | {r["step_ms"]:.1f} '
      f'| {r["pipelined_step_ms"]:.1f} | {r["img_per_sec"]:.0f} '
      f'| {r["compile_s"]:.1f} | {r["tflops_per_sec"]:.2f} '
      f'| {_fmt(r["mfu"], ".3f")} | {_fmt(r["xla_memory_mb"], ".0f")} |'
    )
  for o in result.get('overhead', []):
    lines.append(
      f'LayerMatch / FixMatch, {o["case"]} {o["dtype"]}: {o["ratio"]:.3f}'
    )
  i = result.get('input')
  if i:
    lines.append(
      f'input ({i["case"]}): augmentation {i["augment_ms"]:.1f} ms alone, '
      f'{100 * i["augment_share"]:.0f}% of the step; host '
      f'{i["host_img_per_sec"]:.0f} img/s vs device '
      f'{i["device_img_per_sec"]:.0f} img/s; fed step '
      f'{i["fed_step_ms"]:.1f} ms vs on-device batch '
      f'{i["device_step_ms"]:.1f} ms (gap {100 * i["host_gap"]:+.1f}%)'
    )
  for p in result.get('projection', []):
    lines.append(
      f'2^20 steps of {p["case"]} LayerMatch, {p["dtype"]}: {p["hours"]:.1f} h'
    )
  peer = result.get('peer', {})
  for r in peer.get('rows', []):
    lines.append(
      f'PyTorch peer ({peer["device"]}, {r["dtype"]}): {r["pytorch_step_ms"]:.1f} '
      f'ms; project FixMatch {r["project_step_ms"]:.1f} ms (ratio '
      f'{r["ratio"]:.2f}), {r["project_step_no_augment_ms"]:.1f} ms on ready views '
      f'(ratio {r["ratio_no_augment"]:.2f})'
    )
  if 'skipped' in peer:
    lines.append(f'PyTorch peer: skipped ({peer["skipped"]})')
  learn = result.get('learning', {})
  if 'evals' in learn:
    curve = ', '.join(f'{s}: {t:.3f}' for s, t in learn['evals'])
    lines.append(
      f'learning ({learn["data"]}, {learn["model"]}, {learn["num_labels"]} '
      f'labels, {learn["steps"]} steps, {learn["seconds"]:.0f} s): {curve}'
    )
  elif 'skipped' in learn:
    lines.append(f'learning run: skipped ({learn["skipped"]})')
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  preset = PRESETS[args.preset]
  steps = args.steps or preset.steps
  seconds = (
    preset.learn_seconds if args.learn_seconds is None else args.learn_seconds
  )
  folder = None
  if args.data:
    folder, archive = learning_benchmark.data_folder(args.data, args.unpack_dir)
    if archive:
      learning_benchmark.unpack(archive, folder)
    learning_benchmark.check_folder(folder)
  cli_util.import_configs()

  result = dict(
    environment=environment(args.preset), steps=[], overhead=[], wall_s={}
  )

  def save():
    cli_util.write_json(args.out, result, indent=1)

  def say(text):
    print(text, flush=True)

  cases = [c for c in preset.cases if c.name in args.cases]
  clock = time.perf_counter()

  def lap(section):
    nonlocal clock
    now = time.perf_counter()
    result['wall_s'][section] = now - clock
    clock = now
    save()

  for case in cases:
    for dtype in args.dtypes:
      say(f'timing {case.name} {dtype}: {", ".join(args.algorithms)}')
      rows = time_case(case, dtype, args.algorithms, steps)
      result['steps'] += rows
      by = {r['algorithm']: r for r in rows}
      if 'fixmatch' in by and 'layermatch' in by:
        result['overhead'].append(
          dict(
            case=case.name,
            dtype=dtype,
            ratio=by['layermatch']['pipelined_step_ms']
            / by['fixmatch']['pipelined_step_ms'],
          )
        )
      save()
  lap('steps')
  first = cases[0]
  say(f'input pipeline and augmentation: {first.name}')
  result['input'] = time_input(first, preset, folder, steps)
  lap('input')
  result['projection'] = [
    dict(
      case=first.name,
      dtype=r['dtype'],
      hours=r['pipelined_step_ms'] * PROJECTED_STEPS / 3.6e6,
    )
    for r in result['steps']
    if r['case'] == first.name and r['algorithm'] == 'layermatch'
  ]
  if args.peer == 'auto':
    say('PyTorch peer')
    result['peer'] = time_peer(first, args.dtypes, steps, result['steps'])
  else:
    result['peer'] = dict(skipped='--peer=off')
  lap('peer')
  say('learning run')
  result['learning'] = learning_run(
    preset, folder, seconds, result['input']['fed_step_ms']
  )
  lap('learning')
  print(table(result), flush=True)
  print(f'Wrote {args.out}', flush=True)
  return result


def run(argv=None):
  """`layermatch-accelerator-benchmark`: bad input as one `error:` line, exit 2."""
  # The learning run's data errors are bad input too.
  cli_util.run(main, argv, errors=(data.DataError,))


if __name__ == '__main__':
  run(sys.argv[1:])
