"""ImageNet-100 (a fixed list of 100 ImageNet-2012 classes, see data/tfds_sources.py),
ResNet-50 at 224 px, 100 labels per class by default.

  python tools/prepare_data.py --dataset=imagenet100 --data_dir=DIR --manual_dir=ARCHIVES
  python -m layermatch_jax.main --config=configs/imagenet100.py --workdir=DIR \
      --config.data.dir=DIR

Images are decoded by the input pipeline's workers (the set does not fit in memory).
Expected runtime and accuracy: not measured yet; use several accelerators and
--config.model.dtype=bfloat16.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'imagenet100'
  config.data.num_labels = 10000
  config.data.image_size = 224
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)
  config.data.num_threads = 16
  config.model.name = 'resnet50'
  config.optim.weight_decay = 3e-4
  config.eval_batch_size = 512
  return config
