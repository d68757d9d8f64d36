"""Demo: LayerMatch on scikit-learn's digits with 5 labels per class, on a CPU.

  python -m layermatch_jax.main --config=configs/demo.py --workdir=/tmp/demo

No download: the 1797 8x8 digits ship with scikit-learn (1437 train, 360 test).
50 labels (5 per class), the other train images unlabeled. WRN-10-1 on 16x16.
Expected runtime and accuracy (2-core CPU, measured): about 4.5 minutes; test
top-1 over seeds 0-2 0.938 +- 0.026 (seed 0: 0.908); `--config.algorithm=supervised`
with the same labels 0.849 +- 0.004, `--config.algorithm=fixmatch` 0.964 +- 0.008,
`--config.algorithm=layermatch_adaptive` (consensus head gradient) 0.963 +- 0.015,
`--config.algorithm=layermatch_warmup` 0.962 +- 0.014 (README, Results).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.algorithm = 'layermatch'
  config.data.name = 'digits'
  config.data.num_labels = 50
  config.data.image_size = 16
  config.data.mean = (0.27, 0.27, 0.27)
  config.data.std = (0.38, 0.38, 0.38)
  config.augment.flip = False  # A mirrored digit is not the same digit.
  config.model.name = 'wrn10_1'
  # Short run: BatchNorm statistics must follow the weights quickly.
  config.model.bn_momentum = 0.99
  config.batch_size = 32
  config.uratio = 4
  config.eval_batch_size = 360
  config.num_train_steps = 1500
  config.log_every_steps = 100
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  return config
