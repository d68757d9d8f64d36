"""USB-CV CIFAR-100 with 200 labels (2 per class): ViT-S/2 at 32 px fine-tuned
with USB's recipe, the numbers of USB's config/usb_cv/fixmatch/
fixmatch_cifar100_200_0.yaml (microsoft/Semi-supervised-learning): AdamW, lr
5e-4 with 5120 warm-up steps then the FixMatch cosine, layer-wise lr decay 0.5,
weight decay 5e-4, 8 labeled + 8 unlabeled images a step, 204800 steps,
threshold 0.95, stochastic depth 0.2, no parameter EMA (USB's ema_m 0.0).

  python -m layermatch_jax.main --config=configs/usb_cv/cifar100_vit.py \
      --workdir=DIR --config.model.init_from=vit_small_patch2_32_mlp_im_1k_32.safetensors

Pretrained weights: USB fine-tunes from its own ViT-S/2 for 32 px images,
vit_small_patch2_32_mlp_im_1k_32.pth from
https://github.com/microsoft/Semi-supervised-learning/releases/download/v.0.0.0/vit_small_patch2_32_mlp_im_1k_32.pth
Download it yourself (nothing is fetched). It is a PyTorch pickle, which this
project does not read: convert it once to .safetensors (needs torch):

  python tools/convert_checkpoint.py --pth=vit_small_patch2_32_mlp_im_1k_32.pth \
      --out=vit_small_patch2_32_mlp_im_1k_32.safetensors

Its tensor names are timm's (models/pretrained.py maps them); the run prints
what it loaded and skipped. Without model.init_from the ViT starts from random
weights, which is not USB's setting. The algorithm stays configs/default.py's
(LayerMatch); --config.algorithm=fixmatch is USB's FixMatch run.
Needs TFDS cifar100 prepared: python tools/prepare_data.py --dataset=cifar100 --data_dir=DIR.
Expected runtime and accuracy: not measured here (no accelerator). USB reports
for FixMatch at this setting 29.60 +- 0.90 % error (best top-1 over training,
3 seeds; results/usb_cv.csv), i.e. 70.4 % top-1; LayerMatch's: not known.
"""

from configs import cifar100
from configs import usb_cv


def get_config():
  config = cifar100.get_config()  # The dataset and USB's constants.
  config.data.num_labels = 200
  # crop_ratio 0.875: the weak view's 4 px reflect-pad crop, default's 0.125.
  config.model.name = 'vit_s2_32'  # USB's vit_small_patch2_32.
  config.optim.learning_rate = 5e-4
  config.optim.layer_decay = 0.5
  return usb_cv.usb_cv_recipe(config)
