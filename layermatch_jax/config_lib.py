"""Configs: loading one by name, and checks that fail early with one line naming
the bad value and what is valid."""

import numbers
import os

from layermatch_jax import cli_util
from layermatch_jax import models
from layermatch_jax.models import pretrained
from layermatch_jax import optim
from layermatch_jax.algorithms import grad_relu, policies, presets
from layermatch_jax.data import pipeline


class ConfigError(ValueError):
  """A config value that cannot work."""


def load_config(name: str):
  """The config of configs/NAME.py ('demo', 'cifar100', ...) or of a file path,
  from any working directory (a notebook's too).

  A name may carry the config's argument as main's --config does:
  'cifar100:wrn28_8'.
  """
  name, _, arg = name.partition(':')
  folder = os.path.join(cli_util.CHECKOUT, 'configs')
  path = name if name.endswith('.py') else os.path.join(folder, f'{name}.py')
  if not os.path.isfile(path):
    known = sorted(
      f[:-3] for f in os.listdir(folder) if f.endswith('.py') and f[0] != '_'
    )
    raise ConfigError(
      f'config {name!r} not found ({path}): give a path to a config file or '
      f'one of {", ".join(known)}'
    )
  try:
    return cli_util.load_config_file(path, *([arg] if arg else []))
  except cli_util.ToolError as e:
    raise ConfigError(str(e)) from None


def _get(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _check(config, key, ok, valid: str):
  value = _get(config, key)
  if not ok(value):
    raise ConfigError(f'config.{key}={value!r} is not valid: use {valid}')


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_vit(config):
  """A pretrained file only for a ViT, and images a whole number of patches."""
  model = config.model
  vit = models.BACKBONES[model.name][0] is models.ViT
  init_from = model.get('init_from')
  if init_from is not None:
    if not vit:
      raise ConfigError(
        f'config.model.init_from={init_from!r} loads a ViT backbone, but '
        f'model.name={model.name!r} is not a ViT: use one of '
        f'{sorted(n for n, (c, _) in models.BACKBONES.items() if c is models.ViT)}'
      )
    if not isinstance(init_from, str) or not os.path.isfile(init_from):
      raise ConfigError(
        f'config.model.init_from={init_from!r} is not a file: give a local '
        'AugReg/big_vision .npz or timm .safetensors file, or leave it unset'
      )
  _check(
    config,
    'model.posemb_resize',
    lambda v: v in pretrained.POSEMB_RESIZES,
    f"one of {list(pretrained.POSEMB_RESIZES)} (how init_from's position "
    'embeddings fit a new grid)',
  )
  if vit:
    patch = models.BACKBONES[model.name][1]['patch_size']
    if config.data.image_size % patch:
      raise ConfigError(
        f'config.data.image_size={config.data.image_size} is not a multiple '
        f"of {model.name}'s patch size {patch}: the border would be dropped"
      )


def _check_optim(config):
  """optim.name, its warm-up, AdamW's constants and layer-wise decay (ViTs only)."""
  _check(
    config,
    'optim.name',
    lambda v: v in optim.OPTIMIZERS,
    f'one of {list(optim.OPTIMIZERS)}',
  )
  steps = config.num_train_steps
  _check(
    config,
    'optim.warmup_steps',
    lambda v: _is_int(v) and 0 <= v < steps,
    f'an integer in [0, num_train_steps={steps}) (0: no warm-up)',
  )
  for key in ('optim.adam_b1', 'optim.adam_b2'):
    _check(
      config, key, lambda v: _is_num(v) and 0 <= v < 1, 'a number in [0, 1)'
    )
  _check(
    config, 'optim.adam_eps', lambda v: _is_num(v) and v > 0, 'a number > 0'
  )
  _check(
    config,
    'optim.layer_decay',
    lambda v: _is_num(v) and 0 < v <= 1,
    'a number in (0, 1] (1: no layer-wise lr decay)',
  )
  layer_decay, name = config.optim.layer_decay, config.model.name
  if layer_decay != 1 and models.BACKBONES[name][0] is not models.ViT:
    raise ConfigError(
      f'config.optim.layer_decay={layer_decay!r} is for ViTs, but '
      f'model.name={name!r} is not one: use 1.0, or one of '
      f'{sorted(n for n, (c, _) in models.BACKBONES.items() if c is models.ViT)}'
    )


def validate(config):
  """Raises ConfigError on the first invalid value."""
  positive_int = (lambda v: _is_int(v) and v > 0, 'a positive integer')
  for key in (
    'num_train_steps',
    'eval_every_steps',
    'log_every_steps',
    'checkpoint_every_steps',
    'batch_size',
    'eval_batch_size',
    'data.image_size',
  ):
    _check(config, key, *positive_int)
  _check(
    config,
    'data.num_labels',
    lambda v: v == 'all' or (_is_int(v) and v > 0),
    "a positive integer (labeled images, a multiple of the class count) or 'all' "
    '(every train image)',
  )
  _check(
    config,
    'data.labeled_sampling',
    lambda v: v in pipeline.LABELED_SAMPLINGS,
    f'one of {list(pipeline.LABELED_SAMPLINGS)} (over labeled images, over classes)',
  )
  _check(
    config,
    'data.val_per_class',
    lambda v: _is_num(v) and (0 <= v < 1 or (v >= 1 and float(v).is_integer())),
    'a fraction in (0, 1) of each class, a whole count >= 1, or 0 (no evaluation); '
    'used when an image folder has no test/',
  )
  _check(
    config,
    'data.device_prefetch',
    lambda v: _is_int(v) and v >= 0,
    'an integer >= 0 (train batches on the devices ahead of their step; 0: none)',
  )
  _check(config, 'keep_checkpoints', *positive_int)
  _check(config, 'resume', lambda v: isinstance(v, bool), 'True or False')
  _check(config, 'uratio', lambda v: _is_int(v) and v >= 0, 'an integer >= 0')
  _check(
    config,
    'probe_every_steps',
    lambda v: _is_int(v) and v >= 0,
    'an integer >= 0 (0: no probe during training)',
  )
  _check(
    config,
    'probe_max_train',
    lambda v: v is None or (_is_int(v) and v > 0),
    'a positive integer, or unset (every training image)',
  )
  _check(config, 'seed', _is_int, 'an integer')
  _check(
    config,
    'algorithm',
    lambda v: v in presets.PRESETS,
    f'one of {sorted(presets.PRESETS)}',
  )
  _check(
    config,
    'model.name',
    lambda v: v in models.BACKBONES,
    f'one of {sorted(models.BACKBONES)}',
  )
  _check(
    config,
    'model.dtype',
    lambda v: v in models.DTYPES,
    f'one of {sorted(models.DTYPES)}',
  )
  _check(
    config,
    'model.drop_path_rate',
    lambda v: _is_num(v) and 0 <= v < 1,
    'a number in [0, 1) (ViT stochastic depth)',
  )
  _check_vit(config)
  unit = lambda v: _is_num(v) and 0 <= v < 1
  for key in (
    'model.bn_momentum',
    'optim.momentum',
    'optim.ema_decay',
    'layermatch.center_momentum',
  ):
    _check(config, key, unit, 'a number in [0, 1)')
  _check(
    config,
    'optim.learning_rate',
    lambda v: _is_num(v) and v > 0,
    'a number > 0',
  )
  _check(
    config,
    'optim.weight_decay',
    lambda v: _is_num(v) and v >= 0,
    'a number >= 0',
  )
  _check_optim(config)
  _check(
    config,
    'pseudo_label.threshold',
    lambda v: _is_num(v) and 0 <= v <= 1,
    'a number in [0, 1]',
  )
  _check(
    config,
    'pseudo_label.policy',
    lambda v: v is None or v in policies.POLICIES,
    f"one of {sorted(policies.POLICIES)} (or unset: the algorithm preset's)",
  )
  _check(
    config,
    'pseudo_label.flexmatch.mapping',
    lambda v: v in policies.FLEXMATCH_MAPPINGS,
    f'one of {list(policies.FLEXMATCH_MAPPINGS)}',
  )
  _check(
    config,
    'pseudo_label.softmatch.alignment',
    lambda v: v in policies.SOFTMATCH_ALIGNMENTS,
    f'one of {list(policies.SOFTMATCH_ALIGNMENTS)}',
  )
  for key in (
    'pseudo_label.freematch.ema_momentum',
    'pseudo_label.softmatch.ema_momentum',
  ):
    _check(config, key, unit, 'a number in [0, 1)')
  for key in ('pseudo_label.freematch.fairness_weight',):
    _check(config, key, lambda v: _is_num(v) and v >= 0, 'a number >= 0')
  _check(
    config,
    'pseudo_label.softmatch.n_sigma',
    lambda v: _is_num(v) and v > 0,
    'a number > 0',
  )
  _check(
    config,
    'layermatch.temperature',
    lambda v: _is_num(v) and v > 0,
    'a number > 0',
  )
  optional = lambda test: lambda v: v is None or test(v)
  for key in ('layermatch.head_grad_scale', 'layermatch.head_bias_grad_scale'):
    _check(
      config,
      key,
      optional(lambda v: _is_num(v) and 0 <= v <= 1),
      'a number in [0, 1] (0 = Grad-ReLU, 1 = FixMatch)',
    )
  for key in ('layermatch.cluster_weight', 'pseudo_label.unsup_weight'):
    _check(
      config, key, optional(lambda v: _is_num(v) and v >= 0), 'a number >= 0'
    )
  _check(
    config,
    'layermatch.head_grad_rule',
    optional(lambda v: v in grad_relu.HEAD_GRAD_RULES),
    f"one of {list(grad_relu.HEAD_GRAD_RULES)} (or unset: the algorithm preset's)",
  )
  _check(
    config,
    'layermatch.head_grad_warmup_fraction',
    lambda v: _is_num(v) and 0 < v <= 1,
    'a number in (0, 1] (the share of training over which the warmup rule rises)',
  )
  try:  # The knobs together (e.g. 'consensus' needs centres).
    presets.resolve(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check(
    config,
    'augment.pad_fraction',
    lambda v: _is_num(v) and 0 <= v < 0.5,
    'a number in [0, 0.5)',
  )
  _check(
    config,
    'augment.cutout_fraction',
    lambda v: _is_num(v) and 0 <= v <= 1,
    'a number in [0, 1]',
  )
  _check(
    config,
    'augment.num_ops',
    lambda v: _is_int(v) and v >= 0,
    'an integer >= 0',
  )
  for key in ('data.mean', 'data.std'):
    _check(
      config,
      key,
      lambda v: len(tuple(v)) == 3 and all(_is_num(x) for x in v),
      'three numbers (per RGB channel, [0, 1] scale)',
    )
  _check(
    config, 'data.std', lambda v: all(x > 0 for x in v), 'three numbers > 0'
  )
