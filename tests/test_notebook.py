"""notebooks/grad_mask_ablation.ipynb runs headlessly on a tiny setting and checks out.

The kernel is this interpreter (a kernelspec written for the test, so no other
`python3` kernel on the machine can be picked up) and inherits the environment:
the simulated devices and the persistent compilation cache of conftest.py.
"""

import json
import os
import re
import sys

import ipykernel  # noqa: F401  # pylint: disable=unused-import  (the notebook's kernel)
import nbclient
import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'notebooks', 'grad_mask_ablation.ipynb')

TINY = dict(
  STEPS=4,
  EVAL_EVERY=2,
  ALPHAS=[0, 1],
  CLUSTER_WEIGHTS=[1.0],
  MASKS=False,
  GRAD_POINTS=2,
  RULES=['consensus'],
  IMAGE_SIZE=8,
  BATCH_SIZE=8,
  URATIO=2,
  # Every pseudo-label passes, so alpha=1 must give the head a non-zero unsup gradient.
  CONFIG_OVERRIDES={'pseudo_label.threshold': 0.0, 'augment.num_ops': 0},
)


def _outputs_text(nb):
  parts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      if out.get('output_type') == 'stream':
        parts.append(out['text'])
      elif 'data' in out and 'text/plain' in out['data']:
        parts.append(out['data']['text/plain'])
  return ''.join(parts)


def test_notebook_runs_tiny_sweep(tmp_path, monkeypatch):
  kernels = tmp_path / 'jupyter' / 'kernels' / 'python3'
  kernels.mkdir(parents=True)
  (kernels / 'kernel.json').write_text(
    json.dumps(
      dict(
        argv=[
          sys.executable,
          '-m',
          'ipykernel_launcher',
          '-f',
          '{connection_file}',
        ],
        display_name='Python 3 (test)',
        language='python',
      )
    )
  )
  monkeypatch.setenv(
    'JUPYTER_PATH', str(tmp_path / 'jupyter')
  )  # Searched first.
  out_dir = tmp_path / 'out'
  monkeypatch.setenv(
    'LAYERMATCH_NOTEBOOK_PARAMS', json.dumps(dict(TINY, OUT_DIR=str(out_dir)))
  )

  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert (
    len(params) == 1
    and params[0] is [c for c in nb.cells if c.cell_type == 'code'][0]
  )
  client = nbclient.NotebookClient(
    nb,
    kernel_name='python3',
    timeout=300,
    resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}},
  )
  client.execute()  # Raises CellExecutionError on any failing cell.

  text = _outputs_text(nb)
  assert f'python: {sys.executable}\n' in text
  assert 'CHECK alpha=0' in text
  results = json.loads((out_dir / 'results.json').read_text())
  assert results['python'] == sys.executable
  assert results['params']['STEPS'] == 4
  settings = results['settings']
  assert [
    (s['head_grad_scale'], s['cluster_weight'], s['head_grad_rule'])
    for s in settings
  ] == [(0.0, 1.0, 'static'), (1.0, 1.0, 'static'), (0.0, 1.0, 'consensus')]
  assert re.search(
    r'consensus clu=1 +final top1 [01]\.\d{3} .*centre agreement by step 2: ',
    text,
  )
  assert os.path.isfile(out_dir / 'static_vs_consensus.png')
  for s in settings:
    assert [h['step'] for h in s['history']] == [2, 4]
    for h in s['history']:
      assert 0.0 <= h['top1'] <= 1.0
      assert 0.0 <= h['pseudo_label_acc'] <= 1.0
      assert h['mask_ratio'] == 1.0  # Threshold 0.
    assert 0.0 <= s['final_top1'] <= s['best_top1'] <= 1.0
    assert sorted(s['grad_norms']) == ['0', '4']
  by_alpha = {
    s['head_grad_scale']: s for s in settings if s['head_grad_rule'] == 'static'
  }
  for step in ('0', '4'):
    g0 = by_alpha[0.0]['grad_norms'][step]
    g1 = by_alpha[1.0]['grad_norms'][step]
    assert g0['unsup']['head/kernel'] < 1e-6 and g0['unsup']['head/bias'] < 1e-6
    assert g1['unsup']['head/kernel'] > 0 and g1['unsup']['head/bias'] > 0
    # The supervised term and the backbone still get gradients at alpha=0.
    assert g0['sup']['head/kernel'] > 0
    assert g0['unsup']['backbone/stem'] > 0
    # Avg-Clustering never reaches the head.
    assert (
      g0['cluster']['head/kernel'] == 0 and g1['cluster']['head/kernel'] == 0
    )
  # Same initial state and views: alpha does not change the backbone's gradient.
  b0, b1 = (by_alpha[a]['grad_norms']['0']['unsup'] for a in (0.0, 1.0))
  for layer in b0:
    if layer.startswith('backbone/'):
      assert b0[layer] == pytest.approx(b1[layer], rel=1e-5)
  for name in ('accuracy_vs_alpha.png', 'curves.png', 'grad_norms.png'):
    assert (out_dir / name).stat().st_size > 0
