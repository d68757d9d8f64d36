"""Backbone shapes, parameter counts and the two-subtree layout."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from layermatch_jax import models


def _shapes(name, num_classes, size, dtype='float32'):
  cfg = ml_collections.ConfigDict(dict(name=name, dtype=dtype))
  model = models.create_model(cfg, num_classes, axis_name=None)
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, train=False)
  )
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  return variables, out


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  'name,num_classes,size,params,features',
  [
    # The reference counts of the SSL literature: 1.47M and 23.4M.
    ('wrn28_2', 10, 32, 1_467_610, 128),
    ('wrn28_8', 100, 32, 23_401_012, 512),
    ('wrn37_2', 10, 96, 5_929_434, 256),
    ('resnet50', 100, 64, 23_712_932, 2048),
  ],
)
def test_parameter_counts_and_shapes(name, num_classes, size, params, features):
  variables, (z, logits) = _shapes(name, num_classes, size)
  assert set(variables['params']) == {'backbone', 'head'}
  assert set(variables['params']['head']) == {'kernel', 'bias'}
  chex.assert_shape(
    variables['params']['head']['kernel'], (features, num_classes)
  )
  assert _count(variables['params']) == params
  chex.assert_shape(z, (2, features))
  chex.assert_shape(logits, (2, num_classes))
  # BatchNorm statistics belong to the backbone only.
  assert set(variables['batch_stats']) == {'backbone'}


def test_bfloat16_computes_in_bf16_with_float32_params():
  cfg = ml_collections.ConfigDict(dict(name='wrn10_1', dtype='bfloat16'))
  model = models.create_model(cfg, 10, axis_name=None)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert {p.dtype for p in jax.tree.leaves(variables['params'])} == {
    jnp.dtype('float32')
  }
  z, logits = model.apply(variables, x, train=False)
  assert z.dtype == jnp.float32 and logits.dtype == jnp.float32
  cfg32 = ml_collections.ConfigDict(dict(name='wrn10_1', dtype='float32'))
  _, logits32 = models.create_model(cfg32, 10, axis_name=None).apply(
    variables, x, train=False
  )
  # bf16 arithmetic: close to, but not the same as, float32.
  diff = float(jnp.max(jnp.abs(logits - logits32)))
  assert 0 < diff < 0.1 * float(jnp.max(jnp.abs(logits32))) + 1e-2


def test_bfloat16_batchnorm_statistics_stay_float32():
  """A train-mode pass in bf16 updates BatchNorm's running statistics in float32."""
  cfg = ml_collections.ConfigDict(dict(name='wrn10_1', dtype='bfloat16'))
  model = models.create_model(cfg, 10, axis_name=None)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stats = jax.tree.leaves(updated['batch_stats'])
  assert stats and {s.dtype for s in stats} == {jnp.dtype('float32')}
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)),
    variables['batch_stats'],
    updated['batch_stats'],
  )
  assert any(jax.tree.leaves(changed))  # The statistics did move.


def test_unknown_model_and_dtype_name_the_choices():
  with pytest.raises(
    ValueError, match=r"model.name='wrn99' is not one of \[.*'wrn28_2'"
  ):
    models.create_model(
      ml_collections.ConfigDict(dict(name='wrn99', dtype='float32')), 10
    )
  with pytest.raises(ValueError, match=r"model.dtype='fp8' is not one of"):
    models.create_model(
      ml_collections.ConfigDict(dict(name='wrn28_2', dtype='fp8')), 10
    )


def _excess_kurtosis(x):
  z = (x - x.mean()) / x.std()
  return float(np.mean(z**4) - 3.0)


def test_head_initialisation_is_xavier_normal():
  cfg = ml_collections.ConfigDict(dict(name='wrn28_2', dtype='float32'))
  model = models.create_model(cfg, 10, axis_name=None)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
  )
  kernel = np.asarray(variables['params']['head']['kernel']).ravel()
  # Xavier normal: std = sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 138) ...
  std = np.sqrt(2 / 138)
  assert abs(kernel.std() / std - 1) < 0.1
  # ... of a normal truncated at two of its own standard deviations, 2 / 0.8796 std
  # (JAX's truncated_normal with its std correction). Its shape, not only its std:
  # the weights reach nearly up to that bound (a uniform stops at sqrt(3) std,
  # a normal passes it: 29 of 1280 weights expected), and the excess kurtosis
  # is -0.64 (uniform -1.2, normal 0; +-0.14 for 1280 samples).
  bound = 2 / 0.87962566103423978 * std
  assert 0.95 * bound < np.abs(kernel).max() <= bound * (1 + 1e-6)
  assert -0.95 < _excess_kurtosis(kernel) < -0.35
  np.testing.assert_array_equal(variables['params']['head']['bias'], 0)
  # Kaiming fan-out on a 3x3 conv with 32 outputs: std = sqrt(2 / (9 * 32)), an
  # untruncated normal: 4.6% of the 9216 weights beyond 2 std, the largest near
  # 4 std (a truncated normal stops at 2.27, a uniform at 1.73), excess
  # kurtosis 0 (+-0.05).
  conv = np.asarray(
    variables['params']['backbone']['group0_block0']['conv2']['kernel']
  ).ravel()
  std = np.sqrt(2 / (9 * 32))
  assert abs(conv.std() / std - 1) < 0.1
  assert 0.035 < np.mean(np.abs(conv) > 2 * std) < 0.057
  assert np.abs(conv).max() > 3 * std
  assert abs(_excess_kurtosis(conv)) < 0.2


# --------------------------------------------------------------------------
# models/conv.py: the weight gradient summed over batch chunks (CPU).


@pytest.mark.parametrize(
  'shape, chunks',
  [
    ((288, 16, 16, 16), 9),  # 73728 rows / 8192.
    ((288, 8, 8, 32), 2),
    ((100, 16, 16, 3), 2),  # 25600 / 8192 = 3 does not divide 100; 2 does.
    ((7, 16, 16, 3), 1),  # 1792 rows: too small to split.
    ((3, 128, 128, 3), 3),  # 49152 / 8192 = 6, but never more than the images.
  ],
)
def test_conv_num_chunks(shape, chunks):
  from layermatch_jax.models import conv

  assert conv.num_chunks(shape) == chunks
  assert shape[0] % conv.num_chunks(shape) == 0


def test_conv_with_a_symbolic_batch_is_not_chunked():
  """jax.export traces the model with a symbolic batch size (bundle.py)."""
  from layermatch_jax.models import conv

  (b,) = jax.export.symbolic_shape('b')
  assert conv.num_chunks((64 * b, 16, 16, 3)) == 1


@pytest.mark.parametrize(
  'stride, kernel, dtype, tol',
  [
    (1, 3, jnp.float32, 1e-5),
    (2, 3, jnp.float32, 1e-5),
    (2, 1, jnp.float32, 1e-5),
    (1, 3, jnp.bfloat16, 2e-2),
  ],
)
def test_chunked_conv_gradients_equal_xlas(stride, kernel, dtype, tol):
  from jax import lax

  from layermatch_jax.models import conv

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(96, 16, 16, 8)), dtype)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 8, 12)), dtype)
  assert conv.num_chunks(x.shape) == 3  # 24576 rows: the chunked path.
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def loss(fn):
    def f(x, w):
      y = fn(x, w, (stride, stride), 'SAME', dimension_numbers=dn)
      return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

  value, (dx, dw) = loss(conv.conv_general_dilated)(x, w)
  ref_value, (ref_dx, ref_dw) = loss(lax.conv_general_dilated)(x, w)
  assert dw.dtype == w.dtype and dx.dtype == x.dtype
  np.testing.assert_array_equal(value, ref_value)  # The forward is XLA's.
  np.testing.assert_array_equal(dx, ref_dx)  # So is the input gradient.
  scale = float(jnp.max(jnp.abs(ref_dw.astype(jnp.float32))))
  np.testing.assert_allclose(
    np.asarray(dw, np.float32) / scale,
    np.asarray(ref_dw, np.float32) / scale,
    atol=tol,
  )


def test_wrn_gradients_with_and_without_chunking(monkeypatch):
  """The whole WRN's parameter gradients, chunked (CPU default) vs XLA's own."""
  from layermatch_jax.models import conv, wrn

  x = jnp.asarray(np.random.default_rng(1).normal(size=(64, 16, 16, 3)))
  model = wrn.WideResNet(depth=10, widen_factor=1)
  variables = model.init(jax.random.key(0), x[:2], train=False)

  def grads():
    def loss(params):
      y, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        x,
        train=True,
        mutable=['batch_stats'],
      )
      return jnp.mean(y**2)

    return jax.jit(jax.grad(loss))(variables['params'])

  assert conv.num_chunks(x.shape) == 2  # The stem's input is split.
  chunked = grads()
  monkeypatch.setattr(conv, 'CHUNK_ROWS', 0)
  native = grads()
  chex.assert_trees_all_close(chunked, native, rtol=1e-5, atol=1e-7)
  differs = [
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(native))
  ]
  assert any(differs)  # The chunked path did run (float rounding differs).
