"""USB-CV STL-10 with 40 labels (4 per class; the 100k `unlabelled` images join
the unlabeled pool): ViT-B/16 at 96 px fine-tuned with USB's recipe, the numbers
of USB's config/usb_cv/fixmatch/fixmatch_stl10_40_0.yaml
(microsoft/Semi-supervised-learning): AdamW, lr 1e-4 with 5120 warm-up steps
then the FixMatch cosine, layer-wise lr decay 0.65, weight decay 5e-4, 8
labeled + 8 unlabeled images a step, 204800 steps, threshold 0.95, stochastic
depth 0.2, no parameter EMA (USB's ema_m 0.0).

  python -m layermatch_jax.main --config=configs/usb_cv/stl10_vit.py \
      --workdir=DIR --config.model.init_from=mae_pretrain_vit_base.safetensors

Pretrained weights: USB fine-tunes from MAE's ViT-B/16 pretrained on
ImageNet-1k (224 px), mae_pretrain_vit_base.pth from
https://github.com/microsoft/Semi-supervised-learning/releases/download/v.0.0.0/mae_pretrain_vit_base.pth
Download it yourself (nothing is fetched). It is a PyTorch pickle, which this
project does not read: convert it once to .safetensors (needs torch):

  python tools/convert_checkpoint.py --pth=mae_pretrain_vit_base.pth \
      --out=mae_pretrain_vit_base.safetensors

Its tensor names are timm's (models/pretrained.py maps them); the 14x14
position embeddings are resized to the 6x6 grid of 96 px bicubically, as USB
does (model.posemb_resize). Without model.init_from the ViT starts from random
weights, which is not USB's setting. The algorithm stays configs/default.py's
(LayerMatch); --config.algorithm=fixmatch is USB's FixMatch run.
Needs TFDS stl10 prepared: python tools/prepare_data.py --dataset=stl10 --data_dir=DIR.
Expected runtime and accuracy: not measured here (no accelerator). USB reports
for FixMatch at this setting 16.15 +- 1.89 % error (best top-1 over training,
3 seeds; results/usb_cv.csv), i.e. 83.9 % top-1; LayerMatch's: not known.
"""

from configs import stl10
from configs import usb_cv


def get_config():
  config = stl10.get_config()  # The dataset, 96 px and USB's constants.
  # crop_ratio 0.875: the weak view's 12 px reflect-pad crop, default's 0.125.
  config.model.name = 'vit_b16'  # At 96 px: USB's vit_base_patch16_96.
  config.optim.learning_rate = 1e-4
  config.optim.layer_decay = 0.65
  return usb_cv.usb_cv_recipe(config)
