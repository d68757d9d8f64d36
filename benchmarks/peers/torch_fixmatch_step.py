"""Peer benchmark: one PyTorch FixMatch training step, as USB runs it.

Usage (from the repository root, in an environment with torch installed):

  python benchmarks/peers/torch_fixmatch_step.py \
    --depth=28 --widen_factor=2 --num_classes=10 --image_size=32 \
    --labeled=64 --unlabeled=448 --steps=20 --dtype=float32 [--device=cuda]

It prints one JSON line. The step is the one Microsoft's USB
(Semi-supervised-learning) takes for FixMatch with a WRN-d-k backbone, written
out in plain PyTorch so that the project can report "JAX step / PyTorch step"
ratios at the same shapes:

  one forward pass over cat([x_lb, x_ulb_w, x_ulb_s]) with BatchNorm in train
  mode; supervised cross-entropy on the labeled logits; hard pseudo-labels
  from the detached weak logits, masked by max softmax >= 0.95; masked
  cross-entropy of the strong logits; loss = sup + 1.0 * unsup; backward;
  SGD (lr 0.03, momentum 0.9, Nesterov, weight decay 5e-4 on conv and linear
  weights only); a per-step cosine lr schedule; the EMA model update
  (momentum 0.999).

What is timed: each of `steps` steps on its own (time.perf_counter around the
step, with torch.cuda.synchronize() before reading the clock on CUDA), after
`warmup` untimed steps. The reported step_ms is the median.

What is not timed: data loading and augmentation. USB augments on the host,
in DataLoader worker processes, and hands the step already-augmented float
tensors; here the inputs are random float tensors made once, already on the
device. Model construction, the warm-up steps and reading back the loss at
the end are not timed either. USB's train_step also calls .item() four times
per step to log losses (a host sync before backward); that is left out, as
are fp16 GradScaler loss scaling (the mixed-precision option here is bf16
autocast, which needs none) and cudnn.deterministic (USB's train.py sets it;
here it keeps torch's default, False). All three omissions can only make the
PyTorch step faster.

img_per_sec counts labeled + unlabeled images per step: the weak and strong
views of an unlabeled image count once, as in the project's own benchmark.

Runs as a script or imported by path (importlib); it needs only torch.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

_BN_MOMENTUM = 0.001  # torch's convention: weight of the new batch statistic.
_BN_EPS = 0.001
_LEAKY_SLOPE = 0.1


def _bn(channels):
  return nn.BatchNorm2d(channels, momentum=_BN_MOMENTUM, eps=_BN_EPS)


def _conv3x3(in_ch, out_ch, stride):
  return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class WideBasicBlock(nn.Module):
  """Pre-activation block: BN, LeakyReLU, conv3x3, BN, LeakyReLU, conv3x3.

  A 1x1 convolution projects the shortcut when the shape changes. With
  `activate_before_residual` (first block of the network) the projected
  shortcut takes the activated input rather than the raw one.
  """

  def __init__(self, in_ch, out_ch, stride, activate_before_residual=False):
    super().__init__()
    self.bn1 = _bn(in_ch)
    self.conv1 = _conv3x3(in_ch, out_ch, stride)
    self.bn2 = _bn(out_ch)
    self.conv2 = _conv3x3(out_ch, out_ch, 1)
    self.act = nn.LeakyReLU(_LEAKY_SLOPE, inplace=True)
    self.shortcut = None
    if in_ch != out_ch or stride != 1:
      self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
    self.activate_before_residual = activate_before_residual

  def forward(self, x):
    y = self.act(self.bn1(x))
    if self.shortcut is None:
      residual = x
    else:
      residual = self.shortcut(y if self.activate_before_residual else x)
    y = self.conv1(y)
    y = self.conv2(self.act(self.bn2(y)))
    return residual + y


class WideResNet(nn.Module):
  """WRN-depth-widen_factor with a linear head, USB's `wrn_28_2` layout.

  Stem conv3x3 to 16 channels, three groups of (depth - 4) / 6 blocks with
  16k, 32k, 64k channels and strides 1, 2, 2, then BN, LeakyReLU(0.1), global
  average pooling and a Linear layer (with bias) to `num_classes` logits.
  """

  def __init__(self, depth=28, widen_factor=2, num_classes=10):
    super().__init__()
    if (depth - 4) % 6:
      raise ValueError(f'WRN depth must be 6n+4, got {depth}')
    blocks_per_group = (depth - 4) // 6
    self.stem = _conv3x3(3, 16, 1)
    blocks = []
    in_ch = 16
    for g, stride in enumerate((1, 2, 2)):
      width = 16 * widen_factor * 2**g
      for b in range(blocks_per_group):
        blocks.append(
          WideBasicBlock(
            in_ch,
            width,
            stride if b == 0 else 1,
            activate_before_residual=(g == 0 and b == 0),
          )
        )
        in_ch = width
    self.blocks = nn.Sequential(*blocks)
    self.bn_final = _bn(in_ch)
    self.act = nn.LeakyReLU(_LEAKY_SLOPE, inplace=False)
    self.fc = nn.Linear(in_ch, num_classes)

    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(
          m.weight, mode='fan_out', nonlinearity='leaky_relu'
        )
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.zeros_(m.bias)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    x = self.act(self.bn_final(x))
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return self.fc(x)


def parameter_count(model):
  """Number of parameters (BN running statistics are buffers: not counted)."""
  return sum(p.numel() for p in model.parameters())


def backbone_parameter_count(depth, widen_factor):
  """Parameters of WRN-depth-widen_factor without the final Linear head."""
  model = WideResNet(depth, widen_factor, num_classes=1)
  return parameter_count(model) - parameter_count(model.fc)


def _make_optimizer(model, lr=0.03, momentum=0.9, weight_decay=5e-4):
  # USB's get_optimizer (bn_wd_skip=True) exempts BN parameters and biases
  # from weight decay; here that is every parameter with fewer than 2 dims.
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  groups = [
    {'params': decay, 'weight_decay': weight_decay},
    {'params': no_decay, 'weight_decay': 0.0},
  ]
  return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


def _cosine_schedule(optimizer, total_steps=2**20):
  # USB's get_cosine_schedule_with_warmup without warm-up: lr * cos(7/16 pi t).
  return torch.optim.lr_scheduler.LambdaLR(
    optimizer,
    lambda step: max(0.0, math.cos(7.0 / 16.0 * math.pi * step / total_steps)),
  )


class FixMatchStep:
  """Model, EMA model, optimizer and the step; call it to take one step."""

  def __init__(
    self,
    model,
    *,
    device,
    dtype='float32',
    threshold=0.95,
    lambda_u=1.0,
    ema_momentum=0.999,
  ):
    if dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'dtype must be float32 or bfloat16, got {dtype!r}')
    self.model = model
    self.device_type = torch.device(device).type
    self.use_autocast = dtype == 'bfloat16'
    self.threshold = threshold
    self.lambda_u = lambda_u
    self.ema_momentum = ema_momentum
    self.optimizer = _make_optimizer(model)
    self.scheduler = _cosine_schedule(self.optimizer)
    self.params = list(model.parameters())
    self.buffers = list(model.buffers())
    with torch.no_grad():
      self.ema_params = [p.detach().clone() for p in self.params]
      self.ema_buffers = [b.detach().clone() for b in self.buffers]

  def loss(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
    num_lb = y_lb.shape[0]
    logits = self.model(torch.cat([x_lb, x_ulb_w, x_ulb_s]))
    logits_lb = logits[:num_lb]
    logits_ulb_w, logits_ulb_s = logits[num_lb:].chunk(2)
    sup_loss = F.cross_entropy(logits_lb, y_lb)
    probs = torch.softmax(logits_ulb_w.detach(), dim=-1)
    max_probs, pseudo_label = probs.max(dim=-1)
    mask = max_probs.ge(self.threshold).to(max_probs.dtype)
    per_example = F.cross_entropy(logits_ulb_s, pseudo_label, reduction='none')
    unsup_loss = (per_example * mask).mean()
    return sup_loss + self.lambda_u * unsup_loss

  @torch.no_grad()
  def update_ema(self):
    # USB's EMA hook does the same arithmetic per parameter, out of place, and
    # then copies the live model's buffers (BN running statistics) into the
    # EMA model. This uses the in-place multi-tensor torch._foreach_* kernels,
    # the usual fast form (torch.optim.swa_utils, timm's ModelEma), so the
    # PyTorch side is not slowed by one kernel launch per tensor.
    m = self.ema_momentum
    torch._foreach_mul_(self.ema_params, m)
    torch._foreach_add_(self.ema_params, self.params, alpha=1.0 - m)
    torch._foreach_copy_(self.ema_buffers, self.buffers)

  def __call__(self, x_lb, y_lb, x_ulb_w, x_ulb_s):
    self.model.train()
    with torch.autocast(
      self.device_type, dtype=torch.bfloat16, enabled=self.use_autocast
    ):
      loss = self.loss(x_lb, y_lb, x_ulb_w, x_ulb_s)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    self.update_ema()
    return loss.detach()


def _percentile(values, q):
  """Nearest-rank percentile, q in (0, 100]."""
  ordered = sorted(values)
  rank = max(1, math.ceil(q / 100.0 * len(ordered)))
  return ordered[rank - 1]


def time_fixmatch_step(
  *,
  depth=28,
  widen_factor=2,
  num_classes=10,
  image_size=32,
  labeled=64,
  unlabeled=448,
  steps=20,
  warmup=3,
  dtype='float32',
  channels_last=True,
  device=None,
  threads=None,
  seed=0,
):
  """Builds WRN-depth-widen_factor and times FixMatch steps on random inputs.

  Returns a JSON-serialisable dict (see the module docstring for what is and
  is not timed).
  """
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  if threads is not None:
    torch.set_num_threads(threads)
  if device is None:
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
  device = torch.device(device)
  is_cuda = device.type == 'cuda'
  if is_cuda:
    torch.backends.cudnn.benchmark = True  # As USB's train.py sets it.
  torch.manual_seed(seed)

  model = WideResNet(depth, widen_factor, num_classes).to(device)
  memory_format = torch.contiguous_format
  if channels_last:
    memory_format = torch.channels_last
    model = model.to(memory_format=memory_format)
  step = FixMatchStep(model, device=device, dtype=dtype)

  def images(n):
    x = torch.randn(n, 3, image_size, image_size, device=device)
    return x.contiguous(memory_format=memory_format)

  x_lb = images(labeled)
  y_lb = torch.randint(0, num_classes, (labeled,), device=device)
  x_ulb_w = images(unlabeled)
  x_ulb_s = images(unlabeled)

  def sync():
    if is_cuda:
      torch.cuda.synchronize(device)

  loss = None
  for _ in range(warmup):
    loss = step(x_lb, y_lb, x_ulb_w, x_ulb_s)
  sync()
  if is_cuda:
    torch.cuda.reset_peak_memory_stats(device)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    loss = step(x_lb, y_lb, x_ulb_w, x_ulb_s)
    sync()
    times.append(time.perf_counter() - start)

  final_loss = float(loss)
  if not math.isfinite(final_loss):
    raise FloatingPointError(f'non-finite loss {final_loss}')
  step_ms = statistics.median(times) * 1e3
  peak_mb = None
  if is_cuda:
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
  return {
    'framework': 'pytorch',
    'torch_version': torch.__version__,
    'device': torch.cuda.get_device_name(device) if is_cuda else device.type,
    'threads': torch.get_num_threads(),
    'dtype': dtype,
    'channels_last': bool(channels_last),
    'model': f'wrn{depth}_{widen_factor}',
    'backbone_params': backbone_parameter_count(depth, widen_factor),
    'labeled': labeled,
    'unlabeled': unlabeled,
    'image_size': image_size,
    'steps': steps,
    'warmup': warmup,
    'step_ms': step_ms,
    'step_ms_min': min(times) * 1e3,
    'step_ms_p90': _percentile(times, 90) * 1e3,
    'img_per_sec': (labeled + unlabeled) / (step_ms / 1e3),
    'peak_device_memory_mb': peak_mb,
    'final_loss': final_loss,
  }


def _bool(text):
  value = text.strip().lower()
  if value in ('1', 'true', 'yes', 'y', 'on'):
    return True
  if value in ('0', 'false', 'no', 'n', 'off'):
    return False
  raise argparse.ArgumentTypeError(f'not a boolean: {text!r}')


def main(argv=None):
  parser = argparse.ArgumentParser(
    description='Times a USB-style PyTorch FixMatch step; prints JSON.'
  )
  parser.add_argument('--depth', type=int, default=28)
  parser.add_argument('--widen_factor', type=int, default=2)
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--labeled', type=int, default=64)
  parser.add_argument('--unlabeled', type=int, default=448)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument(
    '--dtype', choices=('float32', 'bfloat16'), default='float32'
  )
  parser.add_argument(
    '--channels_last', type=_bool, nargs='?', const=True, default=True
  )
  parser.add_argument(
    '--device', default=None, help='cpu or cuda (default: cuda if available)'
  )
  parser.add_argument('--threads', type=int, default=None)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  result = time_fixmatch_step(**vars(args))
  print(json.dumps(result), flush=True)
  return result


if __name__ == '__main__':
  main()
