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
  config.data.mean = (0.5071, 0.4865, 0.4409)
  config.data.std = (0.2673, 0.2564, 0.2762)
  config.model.name = arg
  config.optim.weight_decay = 1e-3
  return config
