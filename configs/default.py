"""Default hyper-parameters: the classic SSL recipe (FixMatch/USB) with LayerMatch.

Every dataset config starts from this one and changes what differs. Used alone it
describes CIFAR-10 with 40 labels and WRN-28-2:

  python -m layermatch_jax.main --config=configs/default.py --workdir=DIR

Expected runtime and accuracy: not measured yet (2^20 steps; days on one GPU).

Keys whose value is a placeholder (None) are filled from the `algorithm` preset
unless set explicitly, e.g. `--config.algorithm=fixmatch
--config.layermatch.cluster_weight=1.0` is FixMatch plus Avg-Clustering.
"""

import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'supervised' | 'fixmatch' | 'layermatch' | 'layermatch_adaptive' |
  # 'layermatch_warmup' | 'flexmatch' |
  # 'freematch' | 'softmatch'.
  # See algorithms/presets.py.
  config.algorithm = 'layermatch'

  config.num_train_steps = 2**20
  config.eval_every_steps = 5000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3  # Newest checkpoints kept on disk.
  # True: a workdir holding a run continues it. False: refuse such a workdir
  # instead of continuing (never overwrite it).
  config.resume = True

  config.batch_size = 64  # Labeled images per step, over all devices.
  config.uratio = 7  # mu: unlabeled images per labeled image.
  config.eval_batch_size = 256

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'
  config.data.dir = config_dict.placeholder(str)
  # Total labeled images, class-balanced; 'all' labels every train image (e.g.
  # every photo under a folder's train/<class>/, however uneven the classes).
  # An int or 'all', so the field takes either type.
  config.data.num_labels = config_dict.FieldReference(40, field_type=object)
  # How labeled batches are drawn: 'uniform' over the labeled images (USB), or
  # 'balanced': every class equally often (rarer classes' images repeat).
  config.data.labeled_sampling = 'uniform'
  # An image folder without test/: labeled train images held out per class for
  # evaluation, the same ones for every seed. A fraction in (0, 1) of each class
  # (at least one image, always leaving one to train on), a count >= 1, or 0 to
  # train without evaluation. Unused when the folder has test/.
  config.data.val_per_class = config_dict.FieldReference(0.2, field_type=object)
  config.data.split_file = config_dict.placeholder(str)
  config.data.image_size = 32
  config.data.download = False
  config.data.skip_bad_files = False
  config.data.manual_dir = config_dict.placeholder(
    str
  )  # ImageNet archives (download=True).
  # Host pipeline: grain threads and prefetched batches; folder decoding.
  config.data.num_threads = 2
  config.data.prefetch_batches = 4
  # Train batches copied to the devices ahead of their step (0: in the step).
  config.data.device_prefetch = 2
  config.data.max_memory_mb = (
    8192  # Larger folders are decoded per access, not held.
  )
  config.data.decode_processes = (
    0  # >1: decode big folders in processes, not threads.
  )
  # Per-channel normalisation applied on device after augmentation ([0, 1] scale).
  config.data.mean = (0.4914, 0.4822, 0.4465)
  config.data.std = (0.2471, 0.2435, 0.2616)

  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True  # Random horizontal flip in both views.
  config.augment.pad_fraction = 0.125  # Weak view: reflect-pad crop.
  # Strong view: RandAugment ops per image. 3 is USB's classic-CV RandAugment(3, 5)
  # (cifar.py, stl10.py); 2 is the FixMatch paper's setting.
  config.augment.num_ops = 3
  config.augment.cutout_fraction = (
    0.5  # Strong view: Cutout side, max share of the image side.
  )

  config.model = ml_collections.ConfigDict()
  config.model.name = 'wrn28_2'  # See models/__init__.py for the registry.
  config.model.dtype = (
    'float32'  # 'bfloat16' computes in bf16, keeps float32 parameters.
  )
  config.model.bn_momentum = 0.999
  config.model.bn_epsilon = 1e-3
  # ViTs (model.name vit_*): stochastic depth, and a local pretrained file
  # (AugReg/big_vision .npz or timm .safetensors) whose backbone replaces the
  # random one at the start of a run (models/pretrained.py). None: from scratch.
  config.model.drop_path_rate = 0.0
  config.model.init_from = config_dict.placeholder(str)
  # How init_from's position embeddings are resized to a new grid: 'bilinear'
  # (big_vision) or 'bicubic' (torch's, as USB and timm).
  config.model.posemb_resize = 'bilinear'

  config.optim = ml_collections.ConfigDict()
  # 'sgd' (the classic recipe: SGD + Nesterov, coupled L2) or 'adamw' (USB's
  # ViT fine-tuning: AdamW, decoupled decay). See layermatch_jax/optim.py.
  config.optim.name = 'sgd'
  # Base lr; both optimizers follow the schedule below.
  config.optim.learning_rate = 0.03
  # Linear warm-up from 0 over this many steps, then the FixMatch cosine
  # lr cos(7 pi k / 16 K) over the remaining steps (USB's schedule); 0: none.
  config.optim.warmup_steps = 0
  config.optim.momentum = 0.9  # SGD only.
  config.optim.nesterov = True  # SGD only.
  # Conv/dense kernels only (not norms, biases, a ViT's cls/pos_embedding).
  # SGD: added to the gradient; AdamW: decoupled, p -= lr * weight_decay * p.
  config.optim.weight_decay = 5e-4
  config.optim.adam_b1 = 0.9  # AdamW only: torch's defaults, as USB uses them.
  config.optim.adam_b2 = 0.999
  config.optim.adam_eps = 1e-8
  # Layer-wise lr decay (ViTs only): the lr of layer l is scaled by
  # layer_decay ** (L + 1 - l); l = 0 patch embedding, cls and position
  # embeddings, l = i + 1 encoder block i (the final norm joins block L - 1),
  # l = L + 1 the head. 1.0: the same lr everywhere.
  config.optim.layer_decay = 1.0
  config.optim.ema_decay = 0.999  # EMA of parameters, used for evaluation.
  config.optim.ema_warmup = True  # decay_t = min(decay, (1 + t) / (10 + t)).

  config.pseudo_label = ml_collections.ConfigDict()
  # Which unlabeled samples train, and how much (algorithms/policies.py): 'fixed'
  # (FixMatch), 'flexmatch', 'freematch' or 'softmatch'. None: the algorithm
  # preset's ('fixed' for fixmatch and layermatch), so layermatch on top of any
  # policy is `algorithm=layermatch, pseudo_label.policy=NAME`.
  config.pseudo_label.policy = config_dict.placeholder(str)
  config.pseudo_label.threshold = (
    0.95  # tau: 'fixed'; FlexMatch's upper threshold.
  )
  config.pseudo_label.unsup_weight = config_dict.placeholder(float)  # lambda_u
  # FlexMatch (Zhang et al., NeurIPS 2021): T(c) = M(beta(c)) tau.
  config.pseudo_label.flexmatch = ml_collections.ConfigDict()
  config.pseudo_label.flexmatch.threshold_warmup = (
    True  # beta over max(max sigma, unused).
  )
  config.pseudo_label.flexmatch.mapping = (
    'convex'  # M(x) = x / (2 - x); 'linear': M(x) = x.
  )
  # FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds + fairness.
  config.pseudo_label.freematch = ml_collections.ConfigDict()
  config.pseudo_label.freematch.ema_momentum = 0.999  # lambda
  # w_f: 0.001 in every USB classic-CV config (ent_loss_ratio); 0.01 is USB's code
  # default (FreeMatch's get_argument), not used by any of its classic-CV runs.
  config.pseudo_label.freematch.fairness_weight = 0.001
  # SoftMatch (Chen et al., ICLR 2023): truncated Gaussian weights, uniform alignment.
  config.pseudo_label.softmatch = ml_collections.ConfigDict()
  config.pseudo_label.softmatch.ema_momentum = 0.999  # m
  # The Gaussian's std is sigma_t / n_sigma. 2: USB's classic-CV configs and the
  # authors' TorchSSL code (the published results); 1: the paper's eq. 8 as written.
  config.pseudo_label.softmatch.n_sigma = 2.0
  config.pseudo_label.softmatch.alignment = (
    'uniform'  # 'uniform' (UA) | 'labeled' | 'none'
  )

  config.layermatch = ml_collections.ConfigDict()
  # alpha: share of the pseudo-label gradient the head gets (0 Grad-ReLU, 1 FixMatch).
  config.layermatch.head_grad_scale = config_dict.placeholder(float)
  # Separate alpha for the head bias; None means the same as head_grad_scale.
  config.layermatch.head_bias_grad_scale = config_dict.placeholder(float)
  # Per-sample head gradient: 'static' (alpha above for every sample) or
  # 'consensus' (the full gradient where the head's pseudo-label and the nearest
  # centre agree) or 'warmup' (alpha(t) from alpha to 1, below); None means the
  # algorithm preset's (consensus: layermatch_adaptive, warmup: layermatch_warmup).
  # 'warmup': alpha rises linearly to 1 over this share of training.
  config.layermatch.head_grad_rule = config_dict.placeholder(str)
  config.layermatch.head_grad_warmup_fraction = 1 / 3
  config.layermatch.cluster_weight = config_dict.placeholder(float)  # lambda_c
  config.layermatch.center_momentum = 0.999  # beta
  config.layermatch.temperature = 0.1  # T

  # Per-loss-term gradient norms (3 backward passes); the trainer computes them
  # on logging steps only.
  config.grad_norms_by_term = True
  # The layer-wise probe (layermatch_jax/probe.py: head vs linear probe vs kNN vs
  # centres) every this many steps, as metrics.jsonl lines with split 'probe';
  # 0 = off. It embeds every training image: minutes on a CPU for CIFAR.
  # tools/probe.py does the same for saved checkpoints, after the run.
  config.probe_every_steps = 0
  config.probe_max_train = config_dict.placeholder(
    int
  )  # At most this many train images.
  return config
