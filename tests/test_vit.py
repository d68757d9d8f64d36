"""The ViT backbones (models/vit.py) and pretrained weights (models/pretrained.py).

Counts against hand counts and ViT-B/16's published one; checkpoints in both
naming schemes written here from known arrays and read back exactly; the
position-embedding resize against jax.image.resize; Grad-ReLU's exact zero on a
ViT; a real pmapped step, evaluation and checkpoint of a model without BatchNorm.
"""

import zipfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from layermatch_jax import checkpoint, cli_util, evaluation, models, optim
from layermatch_jax import train_step as ts
from layermatch_jax.learner import Learner
from layermatch_jax.models import pretrained
from layermatch_jax.models.vit import ViT
from layermatch_jax.state import create_train_state
from tests.helpers import (
  digits_accuracy,
  random_views,
  tiny_config,
  train_on_digits,
)

K = 4  # classes
TINY = dict(patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64)


def _model_config(name, dtype='float32'):
  config = ml_collections.ConfigDict()
  config.name, config.dtype = name, dtype
  return config


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def vit_count(patch, width, depth, mlp, tokens, channels=3):
  """Parameters of a ViT backbone by hand: stem, cls, pos, blocks, final norm."""
  stem = patch * patch * channels * width + width
  block = (
    2 * 2 * width  # two LayerNorms
    + 4 * (width * width + width)  # query, key, value, out
    + (width * mlp + mlp)
    + (mlp * width + width)  # MLP
  )
  return stem + width + tokens * width + depth * block + 2 * width


def _init(model, size, seed=0):
  return model.init(
    jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False
  )


def test_tiny_vit_counts_shapes_and_no_batch_stats():
  model = models.create_model(_model_config('vit_tiny_test'), K, None)
  variables = _init(model, 8)
  assert set(variables) == {'params'}  # No BatchNorm, no batch_stats.
  # 8 px / patch 4: a 2x2 grid plus the class token.
  assert _count(variables['params']['backbone']) == 18_912
  assert _count(variables['params']['backbone']) == vit_count(4, 32, 2, 64, 5)
  assert _count(variables['params']['head']) == 32 * K + K
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 3))
  z, logits = model.apply(variables, x, train=False)
  chex.assert_shape(z, (3, 32))
  chex.assert_shape(logits, (3, K))
  # bfloat16 computes in bf16 with float32 parameters and features.
  bf16 = models.create_model(_model_config('vit_tiny_test', 'bfloat16'), K)
  z16, _ = bf16.apply(variables, x, train=False)
  assert z16.dtype == jnp.float32
  np.testing.assert_allclose(z16, z, atol=0.1)


def test_drop_path_only_in_training_and_from_the_dropout_stream():
  model = models.Classifier(ViT(drop_path_rate=0.5, **TINY), K)
  variables = _init(model, 8)
  x = jax.random.normal(jax.random.key(1), (16, 8, 8, 3))
  evaluated, _ = model.apply(variables, x, train=False)
  train = lambda seed: model.apply(
    variables, x, train=True, rngs={'dropout': jax.random.key(seed)}
  )[0]
  assert not np.allclose(train(0), evaluated)
  np.testing.assert_array_equal(train(0), train(0))
  assert not np.allclose(train(0), train(1))
  # Without drop path, training mode needs no rng and equals evaluation.
  plain = models.Classifier(ViT(**TINY), K)
  np.testing.assert_array_equal(
    plain.apply(variables, x, train=True)[0],
    plain.apply(variables, x, train=False)[0],
  )


@pytest.mark.parametrize(
  'name,size,expected',
  [
    # ViT-B/16 at 224 px: 86,567,656 with ImageNet's 1000-class head.
    ('vit_b16', 224, 86_567_656 - (768 * 1000 + 1000)),
    ('vit_s2_32', 32, vit_count(2, 384, 12, 1536, 16 * 16 + 1)),
    ('vit_s16', 224, vit_count(16, 384, 12, 1536, 14 * 14 + 1)),
    ('vit_ti16', 224, vit_count(16, 192, 12, 768, 14 * 14 + 1)),
  ],
)
def test_variant_parameter_counts(name, size, expected):
  model = models.create_model(_model_config(name), 10, None)
  shapes = jax.eval_shape(lambda: _init(model, size))  # No compile.
  assert _count(shapes['params']['backbone']) == expected


# ---------------------------------------------------------------------------
# Checkpoint files written from known arrays.


def _tiny_params(pool='token', size=8, seed=0):
  model = models.Classifier(ViT(pool=pool, **TINY), K)
  return jax.device_get(_init(model, size, seed)['params'])


def _known_backbone(params, seed=1):
  """Random arrays, by the model's name, of the shapes of its backbone."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params['backbone'], sep='/')
  return {
    k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat.items()
  }


def _to_timm(known, depth=2):
  """The model's arrays in timm's names and torch layouts, written out here."""
  d = known['embedding/kernel'].shape[-1]
  out = {
    'patch_embed.proj.weight': known['embedding/kernel'].transpose(3, 2, 0, 1),
    'patch_embed.proj.bias': known['embedding/bias'],
    'cls_token': known['cls'],
    'pos_embed': known[pretrained.POS],
    'norm.weight': known['Transformer/encoder_norm/scale'],
    'norm.bias': known['Transformer/encoder_norm/bias'],
  }
  for i in range(depth):
    t, b = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    a = t + 'MultiHeadDotProductAttention_1/'
    q, k, v = (
      known[f'{a}{p}/kernel'].reshape(d, d).T for p in ('query', 'key', 'value')
    )
    out.update(
      {
        b + 'norm1.weight': known[t + 'LayerNorm_0/scale'],
        b + 'norm1.bias': known[t + 'LayerNorm_0/bias'],
        b + 'attn.qkv.weight': np.concatenate([q, k, v]),
        b + 'attn.qkv.bias': np.concatenate(
          [known[f'{a}{p}/bias'].reshape(d) for p in ('query', 'key', 'value')]
        ),
        b + 'attn.proj.weight': known[a + 'out/kernel'].reshape(d, d).T,
        b + 'attn.proj.bias': known[a + 'out/bias'],
        b + 'norm2.weight': known[t + 'LayerNorm_2/scale'],
        b + 'norm2.bias': known[t + 'LayerNorm_2/bias'],
        b + 'mlp.fc1.weight': known[t + 'MlpBlock_3/Dense_0/kernel'].T,
        b + 'mlp.fc1.bias': known[t + 'MlpBlock_3/Dense_0/bias'],
        b + 'mlp.fc2.weight': known[t + 'MlpBlock_3/Dense_1/kernel'].T,
        b + 'mlp.fc2.bias': known[t + 'MlpBlock_3/Dense_1/bias'],
      }
    )
  # safetensors writes an array's buffer as is: transposed views must be copied.
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _assert_backbone_is(params, known):
  flat = traverse_util.flatten_dict(params['backbone'], sep='/')
  assert set(flat) == set(known)
  for name, array in known.items():
    np.testing.assert_array_equal(flat[name], array, err_msg=name)


def test_augreg_npz_round_trip(tmp_path):
  params = _tiny_params()
  known = _known_backbone(params)
  path = str(tmp_path / 'augreg.npz')
  extra = {
    'head/kernel': np.ones((32, 1000), np.float32),
    'head/bias': np.ones(1000, np.float32),
    'pre_logits/kernel': np.ones((32, 32), np.float32),
  }
  np.savez(path, **known, **extra)
  loaded, report = pretrained.load_pretrained(params, path, 8)
  _assert_backbone_is(loaded, known)
  chex.assert_trees_all_equal(loaded['head'], params['head'])  # Never loaded.
  assert report.scheme == 'augreg'
  assert sorted(name for name, _ in report.loaded) == sorted(known)
  assert {name for name, _ in report.skipped} == set(extra)
  assert 'head is never loaded' in dict(report.skipped)['head/kernel']
  assert len(report.lines()) == 1 + len(known) + len(extra)


def test_timm_safetensors_round_trip(tmp_path):
  params = _tiny_params()
  known = _known_backbone(params)
  path = str(tmp_path / 'timm.safetensors')
  tensors = _to_timm(known)
  tensors['head.weight'] = np.ones((1000, 32), np.float32)
  tensors['head.bias'] = np.ones(1000, np.float32)
  save_file(tensors, path)
  loaded, report = pretrained.load_pretrained(params, path, 8)
  _assert_backbone_is(loaded, known)
  chex.assert_trees_all_equal(loaded['head'], params['head'])
  assert report.scheme == 'timm'
  assert len(report.loaded) == len(known)
  assert {name for name, _ in report.skipped} == {'head.weight', 'head.bias'}


def test_timm_layout_computes_what_timm_computes(tmp_path):
  """The qkv split and head order against attention written in timm's layout."""
  params = _tiny_params()
  known = _known_backbone(params)
  tensors = _to_timm(known)
  path = str(tmp_path / 'timm.safetensors')
  save_file(tensors, path)
  loaded, _ = pretrained.load_pretrained(params, path, 8)
  block = loaded['backbone']['Transformer']['encoderblock_0']
  attention = jax.tree.map(jnp.asarray, block['MultiHeadDotProductAttention_1'])
  x = np.random.default_rng(2).normal(size=(1, 5, 32)).astype(np.float32)
  mha = nn.MultiHeadDotProductAttention(num_heads=2, deterministic=True)
  got = mha.apply({'params': attention}, x, x)
  # timm: qkv = x W^T + b -> [N, 3, heads, head_dim]; softmax(q k^T / sqrt(hd)) v.
  qkv = x[0] @ tensors['blocks.0.attn.qkv.weight'].T
  qkv = (qkv + tensors['blocks.0.attn.qkv.bias']).reshape(5, 3, 2, 16)
  q, k, v = qkv.transpose(1, 2, 0, 3)
  weights = jax.nn.softmax(q @ k.transpose(0, 2, 1) / np.sqrt(16.0))
  heads = (weights @ v).transpose(1, 0, 2).reshape(5, 32)
  want = heads @ tensors['blocks.0.attn.proj.weight'].T
  want = want + tensors['blocks.0.attn.proj.bias']
  np.testing.assert_allclose(got[0], want, atol=1e-4, rtol=1e-4)


def test_position_embeddings_resized_with_the_class_token_apart(tmp_path):
  small = _tiny_params(size=16)  # 4x4 grid
  known = _known_backbone(small)
  path = str(tmp_path / 'small.npz')
  np.savez(path, **known)
  large = _tiny_params(size=32, seed=3)  # 8x8 grid
  loaded, report = pretrained.load_pretrained(large, path, 32)
  pos = loaded['backbone']['Transformer']['posembed_input']['pos_embedding']
  source = known[pretrained.POS]
  chex.assert_shape(pos, (1, 65, 32))
  np.testing.assert_array_equal(pos[0, 0], source[0, 0])
  want = jax.image.resize(
    source[0, 1:].reshape(4, 4, 32), (8, 8, 32), 'bilinear'
  )
  np.testing.assert_allclose(pos[0, 1:], np.reshape(want, (64, 32)), atol=1e-6)
  assert 'resized bilinearly to 8x8' in dict(report.loaded)[pretrained.POS]
  # Shrinking (8x8 -> 4x4) matches jax's antialiased bilinear resize too.
  grid = np.random.default_rng(0).normal(size=(8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(
    pretrained.resize_bilinear(grid, (4, 4)),
    jax.image.resize(grid, (4, 4, 3), 'bilinear'),
    atol=1e-6,
  )
  # A ViT that pools by gap drops the class token and its row.
  gap = jax.device_get(
    _init(models.Classifier(ViT(pool='gap', **TINY), K), 32)['params']
  )
  loaded, report = pretrained.load_pretrained(gap, path, 32)
  pos = loaded['backbone']['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_allclose(pos[0], np.reshape(want, (64, 32)), atol=1e-6)
  assert 'no class token' in dict(report.skipped)['cls']


def test_big_vision_names_and_posemb_without_class_row(tmp_path):
  """big_vision's linen names; its posemb has no class row (cls holds it)."""
  params = _tiny_params()
  known = _known_backbone(params)
  renamed = {}
  for name, array in known.items():
    name = name.replace(
      'MultiHeadDotProductAttention_1', 'MultiHeadDotProductAttention_0'
    )
    name = name.replace('LayerNorm_2', 'LayerNorm_1').replace(
      'MlpBlock_3', 'MlpBlock_0'
    )
    renamed['params/' + name.replace(pretrained.POS, 'pos_embedding')] = array
  renamed['params/pos_embedding'] = known[pretrained.POS][:, 1:]
  path = str(tmp_path / 'bv.npz')
  np.savez(path, **renamed)
  loaded, report = pretrained.load_pretrained(params, path, 8)
  assert report.scheme == 'big_vision'
  want = dict(known)
  want[pretrained.POS] = known[pretrained.POS].copy()
  want[pretrained.POS][:, 0] = 0.0
  _assert_backbone_is(loaded, want)


def _one_line_error(fn, *needles):
  with pytest.raises(ValueError) as e:
    fn()
  message = str(e.value)
  assert '\n' not in message, message
  for needle in needles:
    assert needle in message, message
  return message


def test_bad_files_and_shapes_give_one_line(tmp_path):
  params = _tiny_params()
  known = _known_backbone(params)
  load = lambda path, size=8: (
    lambda: pretrained.load_pretrained(params, str(path), size)
  )
  garbage = tmp_path / 'garbage.npz'
  garbage.write_bytes(b'not a checkpoint at all' * 10)
  _one_line_error(load(garbage), str(garbage), 'neither')
  text = tmp_path / 'weights.txt'
  text.write_text('hello')
  _one_line_error(load(text), str(text), 'neither')
  _one_line_error(load(tmp_path / 'absent.npz'), 'no such file')
  torch_like = tmp_path / 'model.bin'
  with zipfile.ZipFile(torch_like, 'w') as z:
    z.writestr('archive/data.pkl', b'x')
  _one_line_error(load(torch_like), str(torch_like), 'not an .npz')
  truncated = tmp_path / 'truncated.safetensors'
  save_file(_to_timm(known), str(truncated))
  truncated.write_bytes(truncated.read_bytes()[:200])
  _one_line_error(load(truncated), str(truncated))

  wrong = dict(known)
  wrong['embedding/kernel'] = np.zeros((4, 4, 3, 16), np.float32)
  np.savez(tmp_path / 'wrong.npz', **wrong)
  _one_line_error(
    load(tmp_path / 'wrong.npz'),
    'embedding/kernel',
    '(4, 4, 3, 16)',
    '(4, 4, 3, 32)',
  )
  tensors = _to_timm(known)
  tensors['blocks.1.attn.qkv.weight'] = np.zeros((96, 16), np.float32)
  save_file(tensors, str(tmp_path / 'wrong.safetensors'))
  _one_line_error(
    load(tmp_path / 'wrong.safetensors'),
    'blocks.1.attn.qkv.weight',
    '(96, 16)',
    '(96, 32)',
  )
  missing = {k: v for k, v in known.items() if 'encoderblock_1' not in k}
  np.savez(tmp_path / 'shallow.npz', **missing)
  _one_line_error(load(tmp_path / 'shallow.npz'), 'encoderblock_1', 'no tensor')
  np.savez(tmp_path / 'ok.npz', **known)
  wrn = models.create_model(_model_config('wrn10_1'), K, None)
  wrn_params = jax.eval_shape(lambda: _init(wrn, 8))['params']
  _one_line_error(
    lambda: pretrained.load_pretrained(wrn_params, str(tmp_path / 'ok.npz'), 8),
    'only a ViT backbone',
  )
  _one_line_error(load(tmp_path / 'ok.npz', 12), 'image_size', '3x3')


# ---------------------------------------------------------------------------
# Training a ViT: Grad-ReLU, the pmapped step, evaluation, checkpoints.


def _on_one_device(fn, *args):
  batched = [jax.tree.map(lambda x: jnp.asarray(x)[None], a) for a in args]
  return jax.tree.map(lambda x: x[0], jax.vmap(fn, axis_name=ts.AXIS)(*batched))


def _max_abs(tree):
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def test_grad_relu_head_gets_exactly_zero_pseudo_label_gradient():
  config = tiny_config(
    'layermatch',
    **{'model.name': 'vit_tiny_test', 'pseudo_label.threshold': 0.0},
  )
  model = models.create_model(config.model, K, axis_name=ts.AXIS)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  state = create_train_state(model, tx, jax.random.key(0), (8, 8, 3), K)
  views = random_views(np.random.default_rng(0), config, K)
  sc = ts.StepConfig.from_config(config, K)
  assert sc.head_grad_scales == {'kernel': 0.0, 'bias': 0.0}
  # d L_u / d params: one backward pass through the step's own loss terms.
  unsup = lambda p: ts.loss_terms(p, state, views, sc)[0]['unsup']
  grads = _on_one_device(jax.grad(unsup), state.params)
  assert _max_abs(grads['head']) == 0.0
  assert _max_abs(grads['backbone']) > 1e-4


def test_pmapped_step_evaluation_and_checkpoint(tmp_path):
  config = tiny_config(
    'layermatch',
    **{'model.name': 'vit_tiny_test', 'model.drop_path_rate': 0.1},
  )
  learner = Learner(config, K, (8, 8, 3))
  assert learner.num_devices == 8
  state = learner.init_state()
  before = learner.host(state.params)
  assert learner.host(state.batch_stats) == {}
  # Ready views: the augmentations' compile is not what this test is about.
  views = random_views(np.random.default_rng(0), config, K)
  state, metrics = learner.step(state, views)
  assert np.isfinite(metrics['loss']) and metrics['loss'] > 0
  host = learner.host(state)
  assert _max_abs(jax.tree.map(lambda a, b: a - b, host.params, before)) > 0
  assert host.batch_stats == {}

  images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), np.uint8)
  eval_batch = dict(
    image=images.reshape(8, 2, 8, 8, 3),
    label=np.zeros((8, 2), np.int32),
    mask=np.ones((8, 2), bool),
  )
  result = evaluation.evaluate_dataset(learner, state, [eval_batch])
  assert result['count'] == 16 and 0 <= result['top1'] <= 1

  meta = checkpoint.state_meta(config, K, (8, 8, 3))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), async_save=False)
  ckpt.save(1, host, {'next_index': 1}, meta)
  ckpt.close()
  template = jax.eval_shape(learner.init_host_state)
  restored, _ = checkpoint.Checkpointer(str(tmp_path / 'ckpt')).restore(
    template, meta
  )
  chex.assert_trees_all_equal(restored.params, host.params)
  assert not jax.tree.leaves(restored.batch_stats)


def test_init_from_loads_the_backbone_into_the_state(tmp_path, capsys):
  config = tiny_config('layermatch', **{'model.name': 'vit_tiny_test'})
  model = models.create_model(config.model, K)
  tx = optim.make_optimizer(config.optim, config.num_train_steps)
  init = lambda **kw: create_train_state(
    model, tx, jax.random.key(0), (8, 8, 3), K, **kw
  )
  fresh = jax.device_get(init())
  known = _known_backbone(fresh.params)
  np.savez(tmp_path / 'w.npz', **known)
  state = jax.device_get(init(init_from=str(tmp_path / 'w.npz')))
  _assert_backbone_is(state.params, known)
  _assert_backbone_is(state.ema_params, known)
  chex.assert_trees_all_equal(state.params['head'], fresh.params['head'])
  assert 'tensors loaded' in capsys.readouterr().out


def test_tiny_vit_learns_digits_from_50_labels():
  """300 LayerMatch steps on 8 px digits (a 2x2 patch grid): 0.51 measured, chance 0.1."""
  config = tiny_config(
    'layermatch',
    **{
      'model.name': 'vit_tiny_test',
      'data.name': 'digits',
      'data.num_labels': 50,
      'batch_size': 16,
      'uratio': 4,
      'num_train_steps': 300,
    },
  )
  learner, state, source, history = train_on_digits(config)
  assert history[-1]['loss_sup'] < 1.5
  assert digits_accuracy(learner, state, source) > 0.35


class _FakeTorchTensor:
  """What the converter needs of a torch tensor: shape, detach().cpu().float().numpy()."""

  def __init__(self, array):
    self._array, self.shape = array, array.shape

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return self

  def numpy(self):
    return self._array.astype(np.float32)


def test_converted_usb_state_dict_loads_as_timm(tmp_path):
  """A USB-style checkpoint ({'model': state dict}, DataParallel's `module.`
  prefix, torch tensors) becomes a .safetensors that init_from loads."""
  from layermatch_jax.commands import convert_checkpoint  # pylint: disable=g-import-not-at-top

  params = _tiny_params()
  known = _known_backbone(params)
  state_dict = {
    f'module.{k}': _FakeTorchTensor(v) for k, v in _to_timm(known).items()
  }
  checkpoint = {'model': state_dict, 'epoch': 7}
  arrays, skipped = convert_checkpoint.state_dict_arrays(checkpoint)
  assert skipped == [] and not any(k.startswith('module.') for k in arrays)
  out = str(tmp_path / 'usb.safetensors')
  convert_checkpoint.write_safetensors(arrays, out)
  loaded, report = pretrained.load_pretrained(params, out, 8)
  _assert_backbone_is(loaded, known)
  assert report.scheme == 'timm'
  with pytest.raises(cli_util.ToolError, match='exists: give a new path'):
    convert_checkpoint.write_safetensors(arrays, out)  # Never overwritten.


def test_convert_checkpoint_cli_errors(tmp_path):
  from layermatch_jax.commands import convert_checkpoint  # pylint: disable=g-import-not-at-top

  with pytest.raises(cli_util.ToolError, match='does not exist'):
    convert_checkpoint.main([f'--pth={tmp_path / "x.pth"}', '--out=y'])
  pth = tmp_path / 'x.pth'
  pth.write_bytes(b'not a pickle')
  try:
    import torch  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import

    needle = 'cannot be read by torch.load'
  except ImportError:
    needle = 'needs torch, which is not installed'
  with pytest.raises(cli_util.ToolError, match=needle):
    convert_checkpoint.main([f'--pth={pth}', f'--out={tmp_path / "y"}'])
  with pytest.raises(cli_util.ToolError, match='not a state dict'):
    convert_checkpoint.state_dict_arrays([1, 2])


# torch 2.13's F.interpolate(mode='bicubic', align_corners=False) of
# arange(16).reshape(4, 4) ** 2 / 10 to 3x3 (what USB resizes position
# embeddings with), written down once here so the test runs without torch.
TORCH_BICUBIC_4_TO_3 = [
  [0.168172, 0.510185, 1.269791],
  [3.560532, 5.4125, 7.682061],
  [13.634374, 16.996296, 20.77581],
]


def test_bicubic_resize_is_torchs():
  grid = np.arange(16, dtype=np.float32).reshape(4, 4, 1) ** 2 / 10
  np.testing.assert_allclose(
    pretrained.resize_bicubic(grid, (3, 3))[..., 0],
    TORCH_BICUBIC_4_TO_3,
    atol=2e-5,
  )
  np.testing.assert_allclose(  # The same size: unchanged.
    pretrained.resize_bicubic(grid, (4, 4)), grid, atol=1e-6
  )
  constant = np.full((14, 14, 2), 0.7, np.float32)  # Weights sum to 1.
  np.testing.assert_allclose(
    pretrained.resize_bicubic(constant, (6, 6)), 0.7, atol=1e-6
  )


def test_bicubic_resize_against_torch_itself():
  torch = pytest.importorskip('torch')
  grid = np.random.default_rng(0).normal(size=(14, 14, 5)).astype(np.float32)
  for size in ((6, 6), (24, 24), (14, 7)):
    want = torch.nn.functional.interpolate(
      torch.from_numpy(grid.transpose(2, 0, 1))[None],
      size=size,
      mode='bicubic',
      align_corners=False,
    )[0].numpy()
    np.testing.assert_allclose(
      pretrained.resize_bicubic(grid, size), want.transpose(1, 2, 0), atol=1e-5
    )


def test_posemb_resize_bicubic_when_loading(tmp_path):
  small = _tiny_params(size=16)  # 4x4 grid
  known = _known_backbone(small)
  path = str(tmp_path / 'small.npz')
  np.savez(path, **known)
  large = _tiny_params(size=32, seed=3)  # 8x8 grid
  loaded, report = pretrained.load_pretrained(
    large, path, 32, posemb_resize='bicubic'
  )
  pos = loaded['backbone']['Transformer']['posembed_input']['pos_embedding']
  source = known[pretrained.POS]
  np.testing.assert_array_equal(pos[0, 0], source[0, 0])  # Class row apart.
  want = pretrained.resize_bicubic(source[0, 1:].reshape(4, 4, 32), (8, 8))
  np.testing.assert_allclose(pos[0, 1:], want.reshape(64, 32), atol=1e-6)
  bilinear = pretrained.resize_bilinear(source[0, 1:].reshape(4, 4, 32), (8, 8))
  assert not np.allclose(want, bilinear, atol=1e-3)  # The choice matters.
  assert 'resized bicubically to 8x8' in dict(report.loaded)[pretrained.POS]
  with pytest.raises(ValueError, match="posemb_resize='nearest' is not one"):
    pretrained.load_pretrained(large, path, 32, posemb_resize='nearest')


def test_posemb_resize_config_is_checked():
  from configs import default
  from configs.usb_cv import cifar100_vit

  from layermatch_jax import config_lib

  assert cifar100_vit.get_config().model.posemb_resize == 'bicubic'  # USB's.
  c = default.get_config()
  assert c.model.posemb_resize == 'bilinear'
  c.model.posemb_resize = 'nearest'
  with pytest.raises(
    config_lib.ConfigError,
    match="config.model.posemb_resize='nearest' is not valid: use one of "
    r"\['bilinear', 'bicubic'\]",
  ):
    config_lib.validate(c)
