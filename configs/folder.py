"""Your own images: a folder DIR/train/<class>/* (labeled), optional DIR/unlabeled/*
(images without labels) and optional DIR/test/<class>/*. Any format PIL reads,
grayscale or colour, any size: resized to data.image_size.

  python -m layermatch_jax.main --config=configs/folder.py --workdir=DIR \
      --config.data.dir=IMAGES --config.data.num_labels=all

data.num_labels='all' labels every image under train/<class>/, however uneven the
classes; a number draws that many (class-balanced, a multiple of the class count)
and uses the rest of train/ without labels. unlabeled/ is always used without
labels. Without test/, data.val_per_class (default 0.2 of each class) labeled
images are held out for evaluation, or none with 0. What was found is printed
before training and kept in DIR/data_summary.json.
For a run on CIFAR-10 as JPEGs (../shared/data/cifar10-jpeg.tar.gz unpacked to
IMAGES) the image statistics below fit; for other images compute yours or keep them.
Expected runtime and accuracy: not measured at these settings (WRN-28-2, 32 px,
2^20 steps: days on one GPU). CIFAR-10 from this folder at 16 px with WRN-10-1
(configs/cifar10_cpu.py, 1500 steps): 0.371 test top-1 with 250 labels.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = 'folder'
  config.data.num_labels = 40
  config.data.image_size = 32
  config.model.name = 'wrn28_2'
  return config
