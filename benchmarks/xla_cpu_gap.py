"""Where XLA:CPU's train step loses to PyTorch's: the backbone and single
convolutions, forward, input gradient and weight gradient, timed apart.

  JAX_PLATFORMS=cpu python benchmarks/xla_cpu_gap.py          # from the checkout
  XLA_FLAGS=--xla_cpu_use_onednn=true JAX_PLATFORMS=cpu python benchmarks/xla_cpu_gap.py

Shapes: the CPU budget's step, 288 images (32 labeled + 2 x 128 unlabeled views)
of 16 px through WRN-10-1, and its three kinds of 3x3 convolution. JAX rows are
timed with the weight gradient as XLA computes it (`native`, models/conv.py's
CHUNK_ROWS = 0) and chunked over the batch (`chunked`, the default on CPUs).
PyTorch rows (when torch imports) use benchmarks/peers/torch_fixmatch_step.py's
WRN, channels_last and NCHW. Each figure is the median of 20 calls after 2
untimed ones, in ms; one JSON line per row. BENCHMARKS.md ("Where XLA:CPU
loses") has the figures and the flags tried.
"""

import importlib.util
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from layermatch_jax.models import conv as conv_lib  # noqa: E402
from layermatch_jax.models import wrn  # noqa: E402

BATCH, SIZE = 288, 16
# (spatial size, input channels, output channels, stride) of WRN-10-1's 3x3s.
CONVS = ((16, 16, 16, 1), (8, 32, 32, 1), (16, 16, 32, 2))


def median_ms(fn, calls=20):
  fn()
  fn()
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return round(statistics.median(times) * 1e3, 2)


def jax_backbone(chunk_rows):
  conv_lib.CHUNK_ROWS = chunk_rows  # Read when the functions are traced.
  model = wrn.WideResNet(depth=10, widen_factor=1)
  x = jnp.asarray(
    np.random.default_rng(0).normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32
  )
  variables = model.init(jax.random.key(0), x[:2], train=False)

  def forward(params, x):
    return model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
    )[0]

  fwd = jax.jit(forward)
  grad = jax.jit(jax.grad(lambda p, x: jnp.mean(forward(p, x) ** 2)))
  params = variables['params']
  return dict(
    fwd=median_ms(lambda: fwd(params, x).block_until_ready()),
    fwd_bwd=median_ms(lambda: jax.block_until_ready(grad(params, x))),
  )


def jax_conv(size, c_in, c_out, stride, conv_fn):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(BATCH, size, size, c_in)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def conv(x, w):
    return conv_fn(x, w, (stride, stride), 'SAME', dimension_numbers=dn)

  g = jnp.ones_like(conv(x, w))
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  return dict(
    fwd=median_ms(lambda: fwd(x, w).block_until_ready()),
    dx=median_ms(lambda: dx(x, w, g).block_until_ready()),
    dw=median_ms(lambda: dw(x, w, g).block_until_ready()),
  )


def torch_rows():
  import torch

  spec = importlib.util.spec_from_file_location(
    'peer', os.path.join(ROOT, 'benchmarks', 'peers', 'torch_fixmatch_step.py')
  )
  peer = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(peer)
  torch.manual_seed(0)
  for channels_last in (True, False):
    model = peer.WideResNet(10, 1, 10).train()
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    if channels_last:
      model = model.to(memory_format=torch.channels_last)
      x = x.contiguous(memory_format=torch.channels_last)

    def fwd_bwd():
      model.zero_grad(set_to_none=True)
      (model(x) ** 2).mean().backward()

    yield dict(
      framework='pytorch',
      part='backbone',
      channels_last=channels_last,
      threads=torch.get_num_threads(),
      fwd=median_ms(lambda: model(x)),
      fwd_bwd=median_ms(fwd_bwd),
    )
  f = torch.nn.functional
  for size, c_in, c_out, stride in CONVS:
    x = torch.randn(BATCH, c_in, size, size)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(c_out, c_in, 3, 3).requires_grad_()
    g = torch.ones_like(f.conv2d(x, w, stride=stride, padding=1))
    fwd = median_ms(lambda: f.conv2d(x, w, stride=stride, padding=1))

    def grad(of):
      return lambda: torch.autograd.grad(
        f.conv2d(x, w, stride=stride, padding=1), of, g
      )

    yield dict(
      framework='pytorch',
      part=f'conv {c_in}->{c_out} {size}px stride {stride}',
      fwd=fwd,
      dx=round(median_ms(grad(x)) - fwd, 2),  # Each includes a forward.
      dw=round(median_ms(grad(w)) - fwd, 2),
    )


def main():
  flags = os.environ.get('XLA_FLAGS', '')
  default_rows = conv_lib.CHUNK_ROWS
  for name, rows in (('native', 0), ('chunked', default_rows)):
    print(
      json.dumps(
        dict(
          framework='jax', part='backbone', weight_grad=name, xla_flags=flags
        )
        | jax_backbone(rows)
      ),
      flush=True,
    )
  conv_lib.CHUNK_ROWS = default_rows
  for size, c_in, c_out, stride in CONVS:
    for name, fn in (
      ('native', lax.conv_general_dilated),
      ('chunked', conv_lib.conv_general_dilated),
    ):
      row = jax_conv(size, c_in, c_out, stride, fn)
      part = f'conv {c_in}->{c_out} {size}px stride {stride}'
      print(
        json.dumps(dict(framework='jax', part=part, weight_grad=name) | row),
        flush=True,
      )
  if importlib.util.find_spec('torch') is not None:
    for row in torch_rows():
      print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
