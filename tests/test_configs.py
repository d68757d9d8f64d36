"""Every config file loads, passes validation and documents its command."""

import glob
import importlib
import os

import pytest

from layermatch_jax import config_lib

CONFIGS = [
  'default',
  'cifar10',
  'cifar100',
  'stl10',
  'imagenet100',
  'folder',
  'demo',
  'cifar10_cpu',
  'usb_cv.cifar100_vit',
  'usb_cv.stl10_vit',
]
REQUIRED_KEYS = [
  'seed',
  'algorithm',
  'num_train_steps',
  'eval_every_steps',
  'log_every_steps',
  'checkpoint_every_steps',
  'data.name',
  'data.dir',
  'data.num_labels',
  'layermatch.head_grad_scale',
  'layermatch.cluster_weight',
  'layermatch.center_momentum',
  'layermatch.temperature',
]


@pytest.mark.parametrize('name', CONFIGS)
def test_config_loads_validates_and_documents_itself(name):
  module = importlib.import_module(f'configs.{name}')
  doc = module.__doc__ or ''
  assert 'python -m layermatch_jax.main --config=configs/' in doc
  assert 'accuracy' in doc.lower()
  config = module.get_config()
  config_lib.validate(config)
  for key in REQUIRED_KEYS:
    node = config
    for part in key.split('.'):
      assert part in node, key
      node = node[part]


def test_every_config_file_is_checked():
  """configs/*.py and configs/*/*.py are all in CONFIGS."""
  root = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs')
  files = glob.glob(os.path.join(root, '*.py')) + glob.glob(
    os.path.join(root, '*', '*.py')
  )
  names = {
    os.path.relpath(f, root)[:-3].replace(os.sep, '.')
    for f in files
    if not os.path.basename(f).startswith('_')
  }
  assert names == set(CONFIGS)


def test_usb_cv_configs_are_usbs_recipe():
  """The numbers of USB's config/usb_cv/fixmatch/fixmatch_{cifar100_200,stl10_40}_0.yaml."""
  from configs.usb_cv import cifar100_vit, stl10_vit  # pylint: disable=g-import-not-at-top

  for module, labels, model, lr, layer_decay in (
    (cifar100_vit, 200, 'vit_s2_32', 5e-4, 0.5),
    (stl10_vit, 40, 'vit_b16', 1e-4, 0.65),
  ):
    c = module.get_config()
    assert (c.data.num_labels, c.model.name) == (labels, model)
    assert (c.optim.name, c.optim.learning_rate, c.optim.layer_decay) == (
      'adamw',
      lr,
      layer_decay,
    )
    assert (c.optim.weight_decay, c.optim.warmup_steps, c.optim.ema_decay) == (
      5e-4,
      5120,
      0.0,
    )
    assert (c.batch_size, c.uratio, c.num_train_steps) == (8, 1, 204800)
    assert (
      config_lib.load_config(
        f'usb_cv/{module.__name__.rsplit(".", 1)[1]}'
      ).to_dict()
      == c.to_dict()
    )


def test_cifar100_wrn28_8_variant():
  from configs import cifar100

  assert cifar100.get_config().model.name == 'wrn28_2'
  assert cifar100.get_config('wrn28_8').model.name == 'wrn28_8'
  with pytest.raises(ValueError, match='use :wrn28_2 or :wrn28_8'):
    cifar100.get_config('wrn99')


def test_defaults_follow_the_classic_recipe():
  from configs import default

  c = default.get_config()
  assert (c.batch_size, c.uratio, c.num_train_steps) == (64, 7, 2**20)
  assert (c.optim.learning_rate, c.optim.momentum, c.optim.nesterov) == (
    0.03,
    0.9,
    True,
  )
  assert (
    c.pseudo_label.threshold,
    c.layermatch.center_momentum,
    c.layermatch.temperature,
  ) == (0.95, 0.999, 0.1)
  assert c.optim.ema_decay == 0.999 and c.model.bn_momentum == 0.999


def test_probe_settings_are_checked():
  from configs import default
  from layermatch_jax.config_lib import ConfigError

  c = default.get_config()
  assert (
    c.probe_every_steps == 0 and c.probe_max_train is None
  )  # Off by default.
  c.probe_every_steps = -5
  with pytest.raises(
    ConfigError, match=r'config.probe_every_steps=-5 is not valid'
  ):
    config_lib.validate(c)
  c = default.get_config()
  c.probe_max_train = 0
  with pytest.raises(
    ConfigError, match=r'config.probe_max_train=0 is not valid'
  ):
    config_lib.validate(c)


def test_policy_config_defaults_are_the_default_configs():
  """PolicyConfig's field defaults (for direct construction) equal what
  configs/default.py gives: configs/default.py stays the one source."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from layermatch_jax.algorithms import policies  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  for name in policies.POLICIES:
    from_config = policies.PolicyConfig.from_config(config, name)
    # FreeMatch's fairness weight is the config's; the others have no term.
    fairness = from_config.fairness_weight if name == 'freematch' else 0.0
    assert from_config == policies.PolicyConfig(name, fairness_weight=fairness)


def test_vit_settings_are_checked(tmp_path):
  """model.init_from only for a ViT and only an existing file; a ViT's image
  size a whole number of patches."""
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  weights = tmp_path / 'vit.npz'
  weights.write_bytes(b'')
  config.model.init_from = str(weights)
  with pytest.raises(
    config_lib.ConfigError, match="model.name='wrn28_2' is not a ViT"
  ):
    config_lib.validate(config)
  config.model.name = 'vit_s16'
  config.data.image_size = 32
  config_lib.validate(config)  # 32 = 2 patches of 16.
  config.model.init_from = str(tmp_path / 'missing.npz')
  with pytest.raises(
    config_lib.ConfigError, match='missing.npz.* is not a file'
  ):
    config_lib.validate(config)
  config.model.init_from = None
  config.data.image_size = 40
  with pytest.raises(
    config_lib.ConfigError,
    match="image_size=40 is not a multiple of vit_s16's patch size 16",
  ):
    config_lib.validate(config)
  config.data.image_size = 32
  config.model.drop_path_rate = 1.0
  with pytest.raises(
    config_lib.ConfigError, match='drop_path_rate=1.0 is not valid'
  ):
    config_lib.validate(config)


@pytest.mark.parametrize('value', [-1, None])
def test_device_prefetch_is_checked(value):
  from configs import default

  c = default.get_config()
  assert c.data.device_prefetch == 2  # Double buffering by default.
  c.data.device_prefetch = value
  with pytest.raises(
    config_lib.ConfigError,
    match=rf'config.data.device_prefetch={value!r} is not valid: use an '
    'integer >= 0',
  ):
    config_lib.validate(c)
