"""A convolution whose weight gradient is summed over batch chunks on CPUs.

XLA:CPU computes a convolution's weight gradient (the convolution that contracts
over batch and space into a small kernel) 5-10x slower than oneDNN does for the
same shapes, and it is most of a CPU train step (BENCHMARKS.md, "Where XLA:CPU
loses"). Computed chunk by chunk over the batch, each chunk of about
`CHUNK_ROWS` input rows (batch x height x width) and the chunks summed in
float32, the same gradient takes about a third of the time. The forward pass
and the input gradient are XLA's own.

On GPUs and TPUs, and for convolutions too small to split, the convolution is
`lax.conv_general_dilated` unchanged. The chunked sum differs from XLA's by
float rounding only (tests/test_models.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Input rows (batch x height x width) per chunk; 0 turns chunking off. 4096 to
# 8192 were equally fast for WRN-10-1 on 16 px CIFAR on a 2-core machine; 16384
# was slower.
CHUNK_ROWS = 8192


def num_chunks(input_shape) -> int:
  """Chunks for an NHWC input: about CHUNK_ROWS rows each, dividing the batch."""
  n, h, w = input_shape[:3]
  if not CHUNK_ROWS or not all(isinstance(d, int) for d in (n, h, w)):
    return 1  # Symbolic sizes (jax.export's batch): the forward is the same.
  chunks = max(1, min(n, n * h * w // CHUNK_ROWS))
  while n % chunks:
    chunks -= 1
  return chunks


def conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs):
  """`lax.conv_general_dilated` (flax's `nn.Conv(conv_general_dilated=...)`)
  with the weight gradient summed over batch chunks (NHWC inputs only)."""
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    **kwargs,
  )
  chunks = num_chunks(lhs.shape)
  if chunks == 1:
    return conv(lhs, rhs)

  @jax.custom_vjp
  def chunked(x, w):
    return conv(x, w)

  def forward(x, w):
    return conv(x, w), (x, w)

  def backward(residuals, g):
    x, w = residuals
    dx = jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
    size = x.shape[0] // chunks
    dw = jnp.zeros(w.shape, jnp.float32)
    for i in range(chunks):
      part = slice(i * size, (i + 1) * size)
      d = jax.vjp(lambda w: conv(x[part], w), w)[1](g[part])[0]
      dw = dw + d.astype(jnp.float32)
    return dx, dw.astype(w.dtype)

  chunked.defvjp(forward, backward)
  return chunked(lhs, rhs)


def for_backend():
  """The convolution to give flax's nn.Conv on the default backend."""
  if jax.default_backend() == 'cpu':
    return conv_general_dilated
  return lax.conv_general_dilated
