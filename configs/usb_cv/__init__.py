"""USB-CV configs: ViTs fine-tuned from pretrained weights with USB's recipe.

`usb_cv_recipe(config)` sets what every config/usb_cv/fixmatch/*.yaml of USB
shares; each file here adds its dataset, network, learning rate and layer decay.
"""


def usb_cv_recipe(config):
  """USB-CV's shared settings: 8 + 8 images a step, 204800 steps with 5120
  warm-up, AdamW with weight decay 5e-4, stochastic depth 0.2, no parameter EMA,
  position embeddings resized bicubically."""
  config.batch_size = 8
  config.uratio = 1
  config.num_train_steps = 204800
  config.eval_every_steps = 2048
  config.checkpoint_every_steps = 2048
  config.log_every_steps = 256
  config.model.drop_path_rate = 0.2
  config.optim.name = 'adamw'
  config.optim.warmup_steps = 5120
  config.optim.weight_decay = 5e-4
  config.optim.ema_decay = 0.0  # Evaluation with the live parameters.
  # USB resizes a checkpoint's position embeddings with torch's bicubic.
  config.model.posemb_resize = 'bicubic'
  return config
