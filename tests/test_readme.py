"""The README's Python blocks run as written, from a directory outside the checkout."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
  with open(os.path.join(ROOT, 'README.md')) as f:
    return re.findall(r'^```python\n(.*?)^```', f.read(), flags=re.M | re.S)


def test_readme_python_blocks_run_outside_the_checkout(tmp_path):
  blocks = python_blocks()
  assert blocks, 'the README has no ```python block'
  for i, code in enumerate(blocks):
    # Two simulated devices: the pipeline's batches keep their device axis.
    env = dict(
      os.environ,
      JAX_PLATFORMS='cpu',
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
    )
    proc = subprocess.run(
      [sys.executable, '-c', code],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0, f'block {i}:\n{code}\n{proc.stderr[-3000:]}'
    if 'head gradient from L_u' in code:
      # The demo is LayerMatch: Grad-ReLU gives the head no pseudo-label gradient.
      assert re.search(
        r'loss \d+\.\d+, head gradient from L_u: 0\.0$', proc.stdout.strip()
      ), proc.stdout
