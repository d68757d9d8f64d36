"""scikit-learn's handwritten digits: 1797 8x8 grayscale images, no download.

Fixed split, independent of the seed: the first 1437 images are the train pool,
the last 360 the test set (the usual 80/20 cut in scikit-learn examples).
Every class has 33-37 test images and 141-146 train images. Pixels 0..16 are
scaled to 0..255 and the images are resized (bilinear) to data.image_size and
repeated to 3 channels, so the demo runs through exactly the same code path as
the RGB datasets.
"""

import numpy as np
from PIL import Image

from layermatch_jax.data import sources

NUM_TRAIN = 1437


def _to_images(raw: np.ndarray, size: int) -> np.ndarray:
  gray = np.round(raw * (255.0 / 16.0)).astype(np.uint8)  # [N, 8, 8]
  if size != gray.shape[1]:
    gray = np.stack(
      [
        np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR))
        for g in gray
      ]
    )
  return np.repeat(gray[..., None], 3, axis=-1)


def load_digits_source(data_config) -> sources.Source:
  from sklearn import (
    datasets,
  )  # Imported here: only the demo needs scikit-learn.

  digits = datasets.load_digits()
  size = data_config.image_size
  images = _to_images(digits.images, size)
  labels = digits.target.astype(np.int32)
  return sources.Source(
    name='digits',
    num_classes=10,
    class_names=tuple(str(k) for k in range(10)),
    image_shape=(size, size, 3),
    train=sources.ArrayRecords(images[:NUM_TRAIN], labels[:NUM_TRAIN]),
    test=sources.ArrayRecords(images[NUM_TRAIN:], labels[NUM_TRAIN:]),
    extra_unlabeled=sources.empty_records((size, size, 3)),
  )
