"""Converts a PyTorch ViT checkpoint (timm or USB .pth) to .safetensors.

  layermatch-convert-checkpoint --pth=vit_small_patch2_32_mlp_im_1k_32.pth \
      --out=vit_small_patch2_32_mlp_im_1k_32.safetensors

`model.init_from` reads .npz and .safetensors files, not PyTorch pickles; this
writes the state dict's tensors, names unchanged but for a leading `module.`
(what DataParallel adds), to a .safetensors file that models/pretrained.py maps
by timm's names. A checkpoint that wraps its state dict (`{'model': ...}`,
`{'state_dict': ...}`) is unwrapped. Reading .pth needs torch (a CPU build is
enough), which this project does not install; writing needs only safetensors.

OUT must not exist: nothing is overwritten, and the file is written whole.
Prints one JSON object: {"out", "tensors", "skipped"}. Bad input ends with one
line `error: ...` on stderr and exit status 2.
"""

import json
import os

import numpy as np

from layermatch_jax import cli_util

# Where checkpoints keep the state dict, tried in this order.
_WRAPPERS = ('model', 'state_dict', 'model_state_dict')


def state_dict_arrays(checkpoint) -> tuple[dict, list]:
  """({name: numpy array}, [skipped non-tensor entries]) of a loaded checkpoint."""
  if not isinstance(checkpoint, dict):
    raise cli_util.ToolError(
      f'the checkpoint is a {type(checkpoint).__name__}, not a state dict'
    )
  for key in _WRAPPERS:
    if isinstance(checkpoint.get(key), dict):
      checkpoint = checkpoint[key]
      break
  arrays, skipped = {}, []
  for name, value in checkpoint.items():
    if not hasattr(value, 'shape'):
      skipped.append(str(name))
      continue
    if hasattr(value, 'detach'):  # A torch tensor.
      value = value.detach().cpu().float().numpy()
    arrays[str(name).removeprefix('module.')] = np.ascontiguousarray(value)
  if not arrays:
    raise cli_util.ToolError('the checkpoint holds no tensors')
  return arrays, skipped


def write_safetensors(arrays: dict, out: str):
  """Writes {name: array} to OUT (which must not exist) as one whole file."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top

  if os.path.exists(out):
    raise cli_util.ToolError(
      f'--out={out} exists: give a new path (nothing is overwritten)'
    )
  with cli_util.atomic_write(out, 'wb') as f:
    f.write(save(arrays))


def _load_pth(path: str, trust_pickle: bool):
  if not os.path.isfile(path):
    raise cli_util.ToolError(f'--pth={path} does not exist')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise cli_util.ToolError(
      'reading a .pth checkpoint needs torch, which is not installed: pip '
      'install torch (the CPU build is enough)'
    ) from None
  try:
    return torch.load(path, map_location='cpu', weights_only=not trust_pickle)
  except Exception as e:  # pylint: disable=broad-except
    hint = (
      ''
      if trust_pickle
      else (
        ' (if it holds more than tensors and you trust the file: --trust_pickle)'
      )
    )
    raise cli_util.ToolError(
      f'--pth={path} cannot be read by torch.load: {cli_util.one_line(e)}{hint}'
    ) from e


def main(argv=None):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--pth', required=True, help='A PyTorch checkpoint.')
  parser.add_argument('--out', required=True, help='The .safetensors to write.')
  parser.add_argument(
    '--trust_pickle',
    action='store_true',
    help='Unpickle any object, not only tensors (runs code from the file).',
  )
  args = parser.parse_args(argv)
  if os.path.exists(args.out):
    raise cli_util.ToolError(
      f'--out={args.out} exists: give a new path (nothing is overwritten)'
    )
  arrays, skipped = state_dict_arrays(_load_pth(args.pth, args.trust_pickle))
  write_safetensors(arrays, args.out)
  print(
    json.dumps(
      dict(out=os.path.abspath(args.out), tensors=len(arrays), skipped=skipped)
    )
  )


def run(argv=None):
  """`layermatch-convert-checkpoint`: bad input as one `error:` line, exit 2."""
  cli_util.run(main, argv)
