"""The optimizers: the classic SGD unchanged, AdamW's decay mask, a ViT's
layer-wise lr decay, the warm-up schedule, and the config checks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import default
from layermatch_jax import config_lib, models, optim

NUM_CLASSES = 3


def _config(**optim_overrides):
  config = default.get_config()
  config.num_train_steps = 1000
  for key, value in optim_overrides.items():
    config.optim[key] = value
  return config


def _sgd_before(optim_config, total_steps):
  """make_optimizer as it was before optim.name existed (copied verbatim)."""
  schedule = optim.fixmatch_cosine_schedule(
    optim_config.learning_rate, total_steps
  )
  return optax.chain(
    optax.masked(
      optax.add_decayed_weights(optim_config.weight_decay), optim.kernel_mask
    ),
    optax.sgd(
      schedule, momentum=optim_config.momentum, nesterov=optim_config.nesterov
    ),
  )


def _small_tree(rng):
  return {
    'conv': {'kernel': jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
    'bn': {
      'scale': jnp.asarray(rng.normal(size=4), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=4), jnp.float32),
    },
    'head': {
      'kernel': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=3), jnp.float32),
    },
  }


def _run(tx, params, grads_per_step, params_per_step=None):
  """The updates of each step, params moved by them (or, given
  `params_per_step`, the params each step sees)."""
  state, out = tx.init(params), []
  for k, grads in enumerate(grads_per_step):
    if params_per_step is not None:
      params = params_per_step[k]
    updates, state = tx.update(grads, state, params)
    out.append(updates)
    params = optax.apply_updates(params, updates)
  return out


def _grads(rng, params, steps):
  return [
    jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    for _ in range(steps)
  ]


def _flat(tree):
  return traverse_util.flatten_dict(tree, sep='/')


@pytest.fixture(scope='module')
def vit_params():
  """vit_tiny_test's {'backbone', 'head'} tree: depth 2, 8 px images."""
  model_config = ml_collections.ConfigDict(
    dict(name='vit_tiny_test', dtype='float32', drop_path_rate=0.0)
  )
  model = models.create_model(model_config, NUM_CLASSES, axis_name=None)
  variables = model.init(
    jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False
  )
  return variables['params']


def test_default_is_the_sgd_of_before_bit_for_bit():
  """Today's default config builds the same optimizer as before: the same
  updates to the bit over steps, the same state layout (old checkpoints
  restore), and the first step is -lr (1 + mu) (g + wd p [kernel])."""
  config = default.get_config()
  assert (
    config.optim.name,
    config.optim.warmup_steps,
    config.optim.layer_decay,
  ) == ('sgd', 0, 1.0)
  rng = np.random.default_rng(0)
  params = _small_tree(rng)
  grads = _grads(rng, params, 5)
  tx, before = (
    optim.make_optimizer(config.optim, 1000),
    _sgd_before(config.optim, 1000),
  )
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(
    before.init(params)
  )
  for new, old in zip(_run(tx, params, grads), _run(before, params, grads)):
    jax.tree.map(np.testing.assert_array_equal, new, old)

  o = config.optim
  first = _flat(_run(tx, params, grads[:1])[0])
  for name, g in _flat(grads[0]).items():
    p = _flat(params)[name]
    decayed = g + o.weight_decay * p if name.endswith('kernel') else g
    np.testing.assert_allclose(
      first[name],
      -o.learning_rate * (1 + o.momentum) * decayed,
      rtol=1e-5,
      atol=1e-8,
    )


def test_adamw_decays_kernels_only_on_a_vit(vit_params):
  """The mask: kernels decay; biases, LayerNorms, cls and pos_embedding do not.
  The first AdamW step is -lr (g / (|g| + eps) + wd p [decayed])."""
  mask = _flat(optim.kernel_mask(vit_params))
  decayed = {name for name, m in mask.items() if m}
  assert decayed == {name for name in mask if name.endswith('/kernel')}
  for name in (
    'backbone/embedding/kernel',
    'backbone/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
    'backbone/Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel',
    'backbone/Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel',
    'head/kernel',
  ):
    assert mask[name], name
  for name in (
    'backbone/cls',
    'backbone/Transformer/posembed_input/pos_embedding',
    'backbone/embedding/bias',
    'backbone/Transformer/encoderblock_0/LayerNorm_0/scale',
    'backbone/Transformer/encoderblock_0/LayerNorm_2/bias',
    'backbone/Transformer/encoder_norm/scale',
    'backbone/Transformer/encoder_norm/bias',
    'head/bias',
  ):
    assert not mask[name], name

  config = _config(name='adamw', learning_rate=1e-3, weight_decay=0.05)
  o = config.optim
  tx = optim.make_optimizer(o, config.num_train_steps)
  grads = _grads(np.random.default_rng(1), vit_params, 1)
  updates = _flat(_run(tx, vit_params, grads)[0])
  for name, g in _flat(grads[0]).items():
    p = _flat(vit_params)[name]
    expected = g / (jnp.abs(g) + o.adam_eps) + o.weight_decay * p * mask[name]
    np.testing.assert_allclose(
      updates[name], -o.learning_rate * expected, rtol=1e-5, atol=1e-9
    )


def test_layer_ids_follow_usb(vit_params):
  """Patch embedding, cls, position embeddings 0; block i: i + 1; the final
  norm with the last block (L); the head L + 1. Scale 0.5 ** (L + 1 - id)."""
  scales = _flat(optim.layer_scales(vit_params, 0.5))
  depth = 2
  expected_ids = {
    'backbone/embedding/': 0,
    'backbone/cls': 0,
    'backbone/Transformer/posembed_input/': 0,
    'backbone/Transformer/encoderblock_0/': 1,
    'backbone/Transformer/encoderblock_1/': 2,
    'backbone/Transformer/encoder_norm/': depth,
    'head/': depth + 1,
  }
  for name, scale in scales.items():
    (layer,) = [i for p, i in expected_ids.items() if name.startswith(p)]
    assert scale == 0.5 ** (depth + 1 - layer), name


@pytest.mark.parametrize(
  'name', sorted(n for n, (c, _) in models.BACKBONES.items() if c is models.ViT)
)
def test_every_vit_leaf_has_a_layer(name):
  """Every registered ViT's tree (shapes only) gets a scale; embedding
  layer_decay ** (L + 1), head 1."""
  model_config = ml_collections.ConfigDict(
    dict(name=name, dtype='float32', drop_path_rate=0.0)
  )
  model = models.create_model(model_config, NUM_CLASSES, axis_name=None)
  size = models.BACKBONES[name][1]['patch_size'] * 2
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False
    )
  )['params']
  depth = models.BACKBONES[name][1]['depth']
  scales = _flat(optim.layer_scales(shapes, 0.75))
  assert scales['backbone/embedding/kernel'] == 0.75 ** (depth + 1)
  assert scales['head/kernel'] == 1.0


def test_layer_decay_scales_each_leafs_adamw_update(vit_params):
  """With layer_decay, each leaf's update over several steps is plain AdamW's
  on that leaf alone (decay where masked) times layer_decay ** (L + 1 - id)."""
  config = _config(
    name='adamw',
    learning_rate=1e-3,
    weight_decay=0.05,
    layer_decay=0.5,
    warmup_steps=2,
  )
  o = config.optim
  tx = optim.make_optimizer(o, config.num_train_steps)
  grads = _grads(np.random.default_rng(2), vit_params, 4)
  steps = [_flat(u) for u in _run(tx, vit_params, grads)]
  seen = [_flat(vit_params)]  # The params each step saw: decay depends on them.
  for updates in steps[:-1]:
    seen.append({n: p + updates[n] for n, p in seen[-1].items()})
  scales = _flat(optim.layer_scales(vit_params, 0.5))
  schedule = optim.learning_rate_schedule(o, config.num_train_steps)
  block_0 = 'backbone/Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'
  assert scales[block_0] == 0.5 ** (2 + 1 - (0 + 1))
  for name, p in _flat(vit_params).items():
    reference = optax.adamw(
      schedule,
      b1=o.adam_b1,
      b2=o.adam_b2,
      eps=o.adam_eps,
      weight_decay=o.weight_decay if name.endswith('/kernel') else 0.0,
    )
    plain = _run(
      reference,
      p,
      [_flat(g)[name] for g in grads],
      [params[name] for params in seen],
    )
    for k, (update, ref) in enumerate(zip((s[name] for s in steps), plain)):
      np.testing.assert_allclose(
        update, ref * scales[name], rtol=1e-5, atol=1e-12, err_msg=f'{name} {k}'
      )


def test_warmup_then_fixmatch_cosine():
  """USB's get_cosine_schedule_with_warmup: k / W, then the cosine over K - W."""
  lr, warmup, total = 0.1, 100, 1000
  schedule = optim.learning_rate_schedule(
    _config(learning_rate=lr, warmup_steps=warmup).optim, total
  )
  steps = [0, warmup // 2, warmup, warmup + (total - warmup) // 2, total]
  np.testing.assert_allclose(
    [schedule(k) for k in steps],
    [
      0.0,
      lr / 2,
      lr,
      lr * np.cos(7 * np.pi / 32),
      lr * np.cos(7 * np.pi / 16),
    ],
    rtol=1e-6,
  )
  assert float(schedule(total + 2 * (total - warmup))) == 0.0  # max(0, cos).
  # Without warm-up: the classic schedule itself, so the same bits.
  classic = optim.fixmatch_cosine_schedule(lr, total)
  plain = optim.learning_rate_schedule(_config(learning_rate=lr).optim, total)
  for k in (0, 1, 123, 500, 999, 1000):
    assert np.asarray(plain(k)) == np.asarray(classic(k))
  # The optimizers follow it: step 0 of a warm-up moves nothing.
  params = _small_tree(np.random.default_rng(3))
  grads = _grads(np.random.default_rng(4), params, 1)
  for name in optim.OPTIMIZERS:
    config = _config(name=name, warmup_steps=warmup)
    tx = optim.make_optimizer(config.optim, total)
    for u in jax.tree.leaves(_run(tx, params, grads)[0]):
      np.testing.assert_array_equal(u, 0.0)


@pytest.mark.parametrize(
  'key, value, message',
  [
    (
      'optim.name',
      'adam',
      r"optim.name='adam' is not valid: use one of \['sgd'",
    ),
    ('optim.warmup_steps', -1, 'warmup_steps=-1 is not valid'),
    ('optim.warmup_steps', 1000, r'warmup_steps=1000 .*num_train_steps=1000'),
    (
      'optim.layer_decay',
      0.0,
      r'layer_decay=0.0 is not valid: use a number in \(0, 1\]',
    ),
    ('optim.layer_decay', 1.5, 'layer_decay=1.5 is not valid'),
    (
      'optim.layer_decay',
      0.5,
      "layer_decay=0.5 is for ViTs, but model.name='wrn28_2'",
    ),
    ('optim.adam_b1', 1.0, 'adam_b1=1.0 is not valid'),
    ('optim.adam_b2', -0.1, 'adam_b2=-0.1 is not valid'),
    ('optim.adam_eps', 0.0, 'adam_eps=0.0 is not valid'),
  ],
)
def test_bad_optim_settings_are_one_line_errors(key, value, message):
  config = _config()
  config.optim[key.split('.')[1]] = value
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    config_lib.validate(config)
  assert '\n' not in str(e.value)


def test_good_optim_settings_pass():
  config = _config(name='adamw', layer_decay=0.65, warmup_steps=999)
  config.model.name = 'vit_tiny_test'
  config_lib.validate(config)


def test_layer_decay_on_a_tree_that_is_not_a_vit_names_the_parameter():
  with pytest.raises(ValueError, match='parameter backbone/conv/kernel is not'):
    optim.layer_scales({'backbone': {'conv': {'kernel': jnp.ones(2)}}}, 0.5)
