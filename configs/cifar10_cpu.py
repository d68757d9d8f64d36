"""The CPU learning budget: CIFAR-10 (JPEG folder) at 16x16 px, WRN-10-1, 1500 steps.

  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpeg.tar.gz -C /tmp/cifar10
  python -m layermatch_jax.main --config=configs/cifar10_cpu.py --workdir=DIR \
      --config.data.dir=/tmp/cifar10 --config.data.num_labels=250

What tools/learning_benchmark.py --budget=cpu runs, once per algorithm, label
count and seed. The images are downscaled to 16x16 so that a run fits in about
5 minutes on a 2-core CPU (WRN-10-1 at 32x32 is ~5x slower per step); the whole
train set is the unlabeled pool, the whole test set (10,000) is evaluated.
Expected runtime and accuracy (measured, 2-core CPU, one host device): 5-6
minutes a run alone (supervised: 1-1.5); test top-1 with 250 labels, mean of
seeds 0-2: LayerMatch 0.371, FixMatch 0.368, supervised 0.350. With
--config.num_train_steps=4000 (10-16 minutes a run): 250 labels LayerMatch
0.397, FixMatch 0.385, supervised 0.356 (seeds 3-5: 0.389, 0.377, 0.357; 6 min a
run alone), --config.algorithm=layermatch_adaptive 0.393; 40 labels 0.236,
0.220, 0.224, adaptive 0.229. Measured with the earlier 2-op RandAugment: 250
labels 0.376, 0.374, 0.349; 40 labels 0.235, 0.228, 0.224; 4000 steps, 250
labels 0.400, 0.389, 0.356 (BENCHMARKS.md).
"""

from configs import folder


def get_config():
  config = folder.get_config()  # The CIFAR-10 JPEGs are an image folder.
  config.data.num_labels = 250
  config.data.image_size = 16
  config.model.name = 'wrn10_1'
  # Short run: BatchNorm statistics must follow the weights quickly.
  config.model.bn_momentum = 0.99
  config.batch_size = 32
  config.uratio = 4
  config.eval_batch_size = 500
  config.num_train_steps = 1500
  config.log_every_steps = 100
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 1000
  return config
