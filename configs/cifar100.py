"""CIFAR-100 (labels: 400, 2500 or 10000). WRN-28-2 by default; `:wrn28_8` for the
paper-style WRN-28-8 (every result must say which).

  python -m layermatch_jax.main --config=configs/cifar100.py --workdir=DIR
  python -m layermatch_jax.main --config=configs/cifar100.py:wrn28_8 --workdir=DIR

Needs TFDS cifar100 prepared: python tools/prepare_data.py --dataset=cifar100 --data_dir=DIR.
Expected runtime and accuracy: not measured yet.
"""

from configs import default


def get_config(arg: str = 'wrn28_2'):
  if arg not in ('wrn28_2', 'wrn28_8'):
    raise ValueError(f'configs/cifar100.py:{arg}: use :wrn28_2 or :wrn28_8')
  config = default.get_config()
  config.data.name = 'cifar100'
  config.data.num_labels = 400
  # USB's classic-CV constants (semilearn/datasets/cv_datasets/cifar.py).
  config.data.mean = tuple(x / 255 for x in (129.3, 124.1, 112.4))
  config.data.std = tuple(x / 255 for x in (68.2, 65.4, 70.4))
  config.model.name = arg
  config.optim.weight_decay = 1e-3
  return config
