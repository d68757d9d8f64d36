"""The accelerator benchmark in its quick form (toy sizes, 2 CPU devices): every
section runs, the JSON holds the documented fields, and its derived numbers
follow from the measured ones."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from layermatch_jax.commands import accelerator_benchmark as ab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROW_FIELDS = {
  'case',
  'model',
  'image_size',
  'batch_size',
  'uratio',
  'dtype',
  'algorithm',
  'num_devices',
  'step_ms',
  'step_ms_p90',
  'pipelined_step_ms',
  'img_per_sec',
  'compile_s',
  'flops_per_step',
  'tflops_per_sec',
  'peak_tflops',
  'mfu',
  'xla_memory_mb',
  'peak_device_memory_mb',
}
INPUT_FIELDS = {
  'case',
  'augment_ms',
  'step_no_augment_ms',
  'step_ms',
  'augment_share',
  'host_source',
  'host_img_per_sec',
  'device_img_per_sec',
  'fed_step_ms',
  'device_step_ms',
  'host_gap',
}
ENVIRONMENT_FIELDS = {
  'python',
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'torch',
  'backend',
  'device_kind',
  'device_count',
  'process_count',
  'host_cpus',
  'commit',
  'date',
  'preset',
}


def _run(*args):
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=2',
    JAX_PLATFORMS='cpu',
  )
  return subprocess.run(
    [sys.executable, os.path.join(REPO, 'tools', 'accelerator_benchmark.py')]
    + list(args),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp('accelerator') / 'quick.json'
  proc = _run('--preset=quick', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return json.load(f), proc.stdout


def test_every_field_is_documented():
  for field in ROW_FIELDS | INPUT_FIELDS | ENVIRONMENT_FIELDS | {'wall_s'}:
    assert field in ab.__doc__, field


def test_environment_and_step_rows(quick):
  result, _ = quick
  env = result['environment']
  assert set(env) == ENVIRONMENT_FIELDS
  assert env['backend'] == 'cpu' and env['device_count'] == 2
  assert env['preset'] == 'quick'
  rows = result['steps']
  assert [(r['dtype'], r['algorithm']) for r in rows] == [
    (d, a)
    for d in ('float32', 'bfloat16')
    for a in ('supervised', 'fixmatch', 'layermatch')
  ]
  for r in rows:
    assert set(r) == ROW_FIELDS
    assert r['num_devices'] == 2
    assert r['step_ms'] > 0 and r['step_ms_p90'] >= r['step_ms']
    assert r['compile_s'] > 0 and r['xla_memory_mb'] > 0
    # No CPU peak is known: no MFU rather than a made-up one.
    assert r['peak_tflops'] is None and r['mfu'] is None
    images = r['batch_size'] * (
      1 if r['algorithm'] == 'supervised' else 1 + r['uratio']
    )
    assert r['img_per_sec'] == pytest.approx(
      images / r['pipelined_step_ms'] * 1e3
    )
    assert r['tflops_per_sec'] == pytest.approx(
      r['flops_per_step'] / r['pipelined_step_ms'] * 1e3 / 1e12
    )
  flops = {(r['dtype'], r['algorithm']): r['flops_per_step'] for r in rows}
  for dtype in ('float32', 'bfloat16'):
    # Supervised forwards only the labeled batch: 8 of 8 + 2 x 2 x 8 images.
    assert flops[dtype, 'supervised'] < flops[dtype, 'fixmatch'] / 3
    # LayerMatch adds a clustering loss over 10 centres; no other work.
    assert flops[dtype, 'layermatch'] == pytest.approx(
      flops[dtype, 'fixmatch'], rel=0.02
    )


def test_overhead_and_projection_follow_from_the_rows(quick):
  result, _ = quick
  by = {(r['dtype'], r['algorithm']): r for r in result['steps']}
  for o in result['overhead']:
    assert o['ratio'] == pytest.approx(
      by[o['dtype'], 'layermatch']['pipelined_step_ms']
      / by[o['dtype'], 'fixmatch']['pipelined_step_ms']
    )
  assert [p['dtype'] for p in result['projection']] == ['float32', 'bfloat16']
  for p in result['projection']:
    step_ms = by[p['dtype'], 'layermatch']['pipelined_step_ms']
    assert p['hours'] == pytest.approx(step_ms * 2**20 / 3.6e6)


def test_input_section(quick):
  result, _ = quick
  i = result['input']
  assert set(i) == INPUT_FIELDS
  assert i['host_source'] == 'in-memory arrays (512 images)'
  assert i['host_gap'] == pytest.approx(
    i['fed_step_ms'] / i['device_step_ms'] - 1
  )
  assert 0 <= i['augment_share'] < 1
  assert i['host_img_per_sec'] > 0 and i['augment_ms'] > 0


def test_peer_runs_when_torch_imports_else_says_why(quick):
  result, _ = quick
  peer = result['peer']
  if importlib.util.find_spec('torch') is None:
    assert peer == {'skipped': 'torch is not installed'}
    return
  assert peer['device'] == 'cpu'
  assert [r['dtype'] for r in peer['rows']] == ['float32', 'bfloat16']
  for r in peer['rows']:
    assert r['ratio'] == pytest.approx(
      r['project_step_ms'] / r['pytorch_step_ms']
    )
    assert r['ratio_no_augment'] == pytest.approx(
      r['project_step_no_augment_ms'] / r['pytorch_step_ms']
    )
    # The peer's own JSON: USB's WRN-10-1 backbone, the same images per step.
    assert r['pytorch']['backbone_params'] == 77200
    assert r['pytorch']['labeled'] == 8 and r['pytorch']['unlabeled'] == 16
    assert math.isfinite(r['pytorch']['final_loss'])


def test_wall_time_of_each_section(quick):
  result, _ = quick
  assert list(result['wall_s']) == ['steps', 'input', 'peer', 'learning']
  assert all(v > 0 for v in result['wall_s'].values())


def test_learning_run_learns(quick):
  result, stdout = quick
  learn = result['learning']
  assert learn['data'] == 'digits' and learn['steps'] == 24
  assert [s for s, _ in learn['evals']] == [6, 12, 18, 24]
  assert learn['final_top1'] == learn['evals'][-1][1]
  # 24 steps from 50 labels: well above chance (0.1), seeds fixed.
  assert learn['final_top1'] > 0.2
  assert 'learning (digits, wrn10_1, 50 labels, 24 steps' in stdout
  assert stdout.rstrip().endswith('.json')


@pytest.mark.parametrize(
  'args, message',
  [
    (('--steps=0',), '--steps=0 is not valid'),
    (('--learn_seconds=-1',), '--learn_seconds=-1.0 is not valid'),
    (('--preset=huge',), "invalid choice: 'huge'"),
    (('--data=/nonexistent/cifar',), 'is neither a folder nor a .tar.gz'),
    (
      ('--dtypes=float16',),
      '--dtypes=float16 is not valid for --preset=accelerator: use a '
      'comma-separated subset of float32,bfloat16',
    ),
    (('--preset=quick', '--cases=wrn28_2'), 'subset of wrn10_1-8px'),
  ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
  proc = _run(f'--out={tmp_path / "x.json"}', *args)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), proc.stderr
  assert message in lines[0]
  assert not os.path.exists(tmp_path / 'x.json')


def test_missing_output_folder(tmp_path):
  proc = _run(f'--out={tmp_path / "no" / "x.json"}')
  assert proc.returncode == 2
  assert 'does not exist' in proc.stderr
