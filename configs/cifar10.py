"""CIFAR-10, WRN-28-2, the classic SSL protocol (labels: 10, 40, 250 or 4000).

  # Once (needs tensorflow-cpu):
  python tools/prepare_data.py --dataset=cifar10 --data_dir=~/tensorflow_datasets
  python -m layermatch_jax.main --config=configs/cifar10.py --workdir=DIR \
      --config.data.num_labels=40

Expected runtime and accuracy: not measured yet (2^20 steps of B=64+448; days on one GPU).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'cifar10'
  config.data.num_labels = 40
  config.model.name = 'wrn28_2'
  config.optim.weight_decay = 5e-4
  # USB's classic-CV constants for CIFAR-10 are ImageNet's mean and std
  # (semilearn/datasets/cv_datasets/cifar.py); folder runs keep CIFAR-10's own.
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  return config
