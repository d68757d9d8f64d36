"""STL-10 at 96 px, WRN-37-2 (labels: 40, 250 or 1000); the 100k `unlabelled` images
join the unlabeled pool.

  python -m layermatch_jax.main --config=configs/stl10.py --workdir=DIR

Needs TFDS stl10 prepared: python tools/prepare_data.py --dataset=stl10 --data_dir=DIR.
Expected runtime and accuracy: not measured yet.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'stl10'
  config.data.num_labels = 40
  config.data.image_size = 96
  # USB's classic-CV constants (semilearn/datasets/cv_datasets/stl10.py).
  config.data.mean = tuple(x / 255 for x in (112.4, 109.1, 98.6))
  config.data.std = tuple(x / 255 for x in (68.4, 66.6, 68.5))
  config.model.name = 'wrn37_2'
  return config
