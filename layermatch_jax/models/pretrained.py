"""A ViT's backbone filled from a local checkpoint file (nothing is downloaded).

Two naming schemes, told apart by the file's contents, not its name:

- `.npz` from big_vision / AugReg (google-research/vision_transformer): names
  joined by '/'. models/vit.py uses the AugReg names, so these load as they
  are. big_vision's newer names are renamed first ('params/' prefix dropped;
  top-level `pos_embedding`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`,
  `MlpBlock_0` of its linen ViT), and its position embeddings without a class
  token row get a zero row for the class token (big_vision adds that row into
  `cls`, which is the same function).
- `.safetensors` in timm's naming, read with safetensors.numpy (no torch);
  the mapping is `_timm_rules`: torch's [out, in] Dense weights transposed, the
  fused qkv weight [3D, D] split into query/key/value kernels [D, heads,
  D/heads], the conv weight [D, C, p, p] moved to HWIO [p, p, C, D].

The classifier head (`head/*`, `head.*`; also AugReg's `pre_logits`) is never
loaded: the task's classes differ, so `params['head']` stays as initialised.
Position embeddings are resized on their grid when the model's grid
(image_size / patch size) differs from the file's, bilinearly (with
antialiasing, as jax.image.resize) or bicubically (as torch's
F.interpolate(mode='bicubic', align_corners=False), what USB and older timm
do); the class token's row is kept apart. Every backbone tensor must come
from the file (else ValueError); file tensors this ViT has no place for are
skipped and reported.
"""

import dataclasses
import os
import re
import zipfile
from typing import Callable, Dict, List, Tuple

import numpy as np
from flax import traverse_util

POS = 'Transformer/posembed_input/pos_embedding'
_HEAD_PREFIXES = ('head/', 'head.', 'pre_logits/')


@dataclasses.dataclass
class LoadReport:
  """What `load_pretrained` did, tensor by tensor (names as in the model/file)."""

  path: str
  scheme: str  # 'augreg', 'big_vision' or 'timm'
  loaded: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  initialised: List[Tuple[str, str]] = dataclasses.field(default_factory=list)

  def lines(self, loaded: bool = True) -> List[str]:
    """A summary line, then a line per tensor (`loaded`=False: none of the loaded)."""
    out = [
      f'{self.path} ({self.scheme}): {len(self.loaded)} tensors loaded, '
      f'{len(self.skipped)} skipped, {len(self.initialised)} kept as initialised'
    ]
    if loaded:
      out += [f'  loaded {name} <- {how}' for name, how in self.loaded]
    out += [f'  skipped {name}: {why}' for name, why in self.skipped]
    out += [f'  initialised {name}: {why}' for name, why in self.initialised]
    return out

  def __str__(self):
    return '\n'.join(self.lines())


POSEMB_RESIZES = ('bilinear', 'bicubic')


def load_pretrained(
  params, path: str, image_size, posemb_resize: str = 'bilinear'
) -> Tuple[dict, LoadReport]:
  """Returns (params with the backbone loaded from `path`, report).

  `params`: the Classifier's {'backbone', 'head'} (or a bare ViT backbone tree);
  `image_size`: the model's input size, int or (height, width), which fixes the
  position embeddings' grid; `posemb_resize`: one of POSEMB_RESIZES. Raises
  ValueError (one line naming the file or tensor and the shapes) for a file
  that is neither format, a tensor whose shape does not fit, or a backbone
  tensor the file lacks.
  """
  if posemb_resize not in POSEMB_RESIZES:
    raise ValueError(
      f'posemb_resize={posemb_resize!r} is not one of {POSEMB_RESIZES}'
    )
  params = traverse_util.unflatten_dict(traverse_util.flatten_dict(params))
  backbone = params['backbone'] if 'backbone' in params else params
  model = traverse_util.flatten_dict(backbone, sep='/')
  if POS not in model or 'embedding/kernel' not in model:
    raise ValueError(
      f'pretrained weights {path}: only a ViT backbone (models/vit.py) can be '
      f'loaded, this one has no {POS}'
    )
  kind, tensors = _read(path)
  if kind == 'npz':
    scheme, tensors = _big_vision_names(tensors)
    rules = [(name, name, _same) for name in model]
  else:
    scheme, rules = 'timm', _timm_rules(model)
  report = LoadReport(path, scheme)
  image_hw = (
    (image_size, image_size) if np.ndim(image_size) == 0 else image_size
  )

  for src, dst, convert in rules:
    if src not in tensors:
      if dst == 'cls':  # A checkpoint of a ViT that pools by gap.
        report.initialised.append((dst, f'the file has no {src}'))
        continue
      raise ValueError(
        f'{path}: no tensor {src} for {dst} {tuple(model[dst].shape)} '
        f'(is it a {scheme} ViT of this width and depth?)'
      )
    target = model[dst]
    if dst == POS:
      array, how = _fit_pos_embedding(
        tensors[src],
        target.shape,
        'cls' in model,
        src,
        image_hw,
        model,
        path,
        posemb_resize,
      )
    else:
      array, how = convert(tensors[src], target.shape, src, path), src
    _check_shape(array.shape, target.shape, src, dst, path)
    model[dst] = np.asarray(array, dtype=target.dtype)
    report.loaded.append((dst, how))

  used = {src for src, _, _ in rules}
  for name in tensors:
    if name in used:
      continue
    if name.startswith(_HEAD_PREFIXES):
      why = 'the classifier head is never loaded (the classes differ)'
    elif name in ('cls', 'cls_token'):
      why = 'this ViT pools by gap: it has no class token'
    else:
      why = 'not a parameter of this ViT'
    report.skipped.append((name, why))

  backbone = traverse_util.unflatten_dict(model, sep='/')
  if 'backbone' in params:
    return dict(params, backbone=backbone), report
  return backbone, report


# ---------------------------------------------------------------------------
# Reading a file.


def _read(path: str) -> Tuple[str, Dict[str, np.ndarray]]:
  """('npz' | 'safetensors', {name: array}), by the file's first bytes."""
  if not os.path.isfile(path):
    raise ValueError(f'pretrained weights {path}: no such file')
  with open(path, 'rb') as f:
    head = f.read(9)
  size = os.path.getsize(path)
  try:
    if head[:4] == b'PK\x03\x04':
      with zipfile.ZipFile(path) as z:
        members = z.namelist()
      if not members or not all(m.endswith('.npy') for m in members):
        raise ValueError(
          f'pretrained weights {path} is a zip archive but not an .npz of '
          'arrays (a PyTorch .bin/.pt? save it as .safetensors)'
        )
      with np.load(path, allow_pickle=False) as npz:
        return 'npz', {k: npz[k] for k in npz.files}
    header_len = int.from_bytes(head[:8], 'little') if len(head) == 9 else 0
    if 0 < header_len < size and head[8:9] == b'{':
      # Only .safetensors files need the package.
      from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

      return 'safetensors', dict(load_file(path))
  except ValueError as e:
    if str(e).startswith('pretrained weights'):
      raise
    raise ValueError(f'pretrained weights {path} cannot be read: {e}') from e
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ValueError(
      f'pretrained weights {path} cannot be read ({type(e).__name__}: {first})'
    ) from e
  raise ValueError(
    f'pretrained weights {path} is neither a big_vision/AugReg .npz nor a '
    f'.safetensors file (it starts with {head[:8]!r})'
  )


def _big_vision_names(tensors) -> Tuple[str, Dict[str, np.ndarray]]:
  """big_vision's linen names -> AugReg's (models/vit.py's); ('augreg'|'big_vision', tensors)."""
  tensors = {re.sub(r'^params/', '', k): v for k, v in tensors.items()}
  newer = (
    any('/MlpBlock_0/' in k for k in tensors) or 'pos_embedding' in tensors
  )
  if not newer:
    return 'augreg', tensors
  renames = [
    (r'^(Transformer/)?pos_embedding$', POS),
    (
      r'(encoderblock_\d+)/MultiHeadDotProductAttention_0/',
      r'\1/MultiHeadDotProductAttention_1/',
    ),
    (r'(encoderblock_\d+)/LayerNorm_1/', r'\1/LayerNorm_2/'),
    (r'(encoderblock_\d+)/MlpBlock_0/', r'\1/MlpBlock_3/'),
  ]
  out = {}
  for name, array in tensors.items():
    for pattern, repl in renames:
      name = re.sub(pattern, repl, name)
    out[name] = array
  return 'big_vision', out


# ---------------------------------------------------------------------------
# timm's names and layouts -> the model's. Each converter takes the file's
# array and the model's shape, checks the file's shape that model shape implies,
# and returns the array in the model's layout.

Converter = Callable[[np.ndarray, tuple, str, str], np.ndarray]


def _same(a, shape, src, path):
  del shape, src, path  # Checked against the model's shape by the caller.
  return a


def _conv_kernel(a, shape, src, path):
  """torch [D, C, p, p] (OIHW) -> [p, p, C, D] (HWIO)."""
  p_h, p_w, c, d = shape
  _check_shape(a.shape, (d, c, p_h, p_w), src, 'embedding/kernel', path)
  return np.transpose(a, (2, 3, 1, 0))


def _linear(a, shape, src, path):
  """torch Linear weight [out, in] -> Dense kernel [in, out]."""
  _check_shape(a.shape, shape[::-1], src, f'a {shape} kernel', path)
  return a.T


def _out_kernel(a, shape, src, path):
  """torch proj weight [D, heads * head_dim] -> [heads, head_dim, D]."""
  heads, head_dim, d = shape
  _check_shape(a.shape, (d, heads * head_dim), src, 'out/kernel', path)
  return a.T.reshape(shape)


def _qkv(which: int, is_kernel: bool) -> Converter:
  """Rows [which * D, (which + 1) * D) of timm's fused qkv weight or bias."""

  def convert(a, shape, src, path):
    d_in = shape[0] if is_kernel else None
    heads, head_dim = shape[-2:]
    inner = heads * head_dim
    want = (3 * inner, d_in) if is_kernel else (3 * inner,)
    _check_shape(a.shape, want, src, f'a {shape} query/key/value', path)
    part = a[which * inner : (which + 1) * inner]
    return (part.T if is_kernel else part).reshape(shape)

  return convert


def _timm_rules(model) -> List[Tuple[str, str, Converter]]:
  """(timm name, model name, converter) for every tensor of the model's backbone."""
  rules = [
    ('patch_embed.proj.weight', 'embedding/kernel', _conv_kernel),
    ('patch_embed.proj.bias', 'embedding/bias', _same),
    ('pos_embed', POS, _same),  # Resized by _fit_pos_embedding.
    ('norm.weight', 'Transformer/encoder_norm/scale', _same),
    ('norm.bias', 'Transformer/encoder_norm/bias', _same),
  ]
  if 'cls' in model:
    rules.append(('cls_token', 'cls', _same))
  depth = len({k.split('/')[1] for k in model if '/encoderblock_' in k})
  for i in range(depth):
    b, t = f'blocks.{i}.', f'Transformer/encoderblock_{i}/'
    attn, mlp = t + 'MultiHeadDotProductAttention_1/', t + 'MlpBlock_3/'
    rules += [
      (b + 'norm1.weight', t + 'LayerNorm_0/scale', _same),
      (b + 'norm1.bias', t + 'LayerNorm_0/bias', _same),
      (b + 'norm2.weight', t + 'LayerNorm_2/scale', _same),
      (b + 'norm2.bias', t + 'LayerNorm_2/bias', _same),
      (b + 'attn.proj.weight', attn + 'out/kernel', _out_kernel),
      (b + 'attn.proj.bias', attn + 'out/bias', _same),
      (b + 'mlp.fc1.weight', mlp + 'Dense_0/kernel', _linear),
      (b + 'mlp.fc1.bias', mlp + 'Dense_0/bias', _same),
      (b + 'mlp.fc2.weight', mlp + 'Dense_1/kernel', _linear),
      (b + 'mlp.fc2.bias', mlp + 'Dense_1/bias', _same),
    ]
    for j, part in enumerate(('query', 'key', 'value')):
      rules += [
        (b + 'attn.qkv.weight', f'{attn}{part}/kernel', _qkv(j, True)),
        (b + 'attn.qkv.bias', f'{attn}{part}/bias', _qkv(j, False)),
      ]
  return rules


# ---------------------------------------------------------------------------
# Position embeddings.


def _square_side(n: int):
  side = int(round(np.sqrt(n)))
  return side if side * side == n else None


def _fit_pos_embedding(
  pos, shape, model_has_cls, src, image_hw, model, path, resize='bilinear'
):
  """The file's [1, (1 +) g*g, D] embeddings fitted to the model's [1, T, D]."""
  pos = np.asarray(pos)
  if pos.ndim == 2:
    pos = pos[None]
  if pos.ndim != 3 or pos.shape[0] != 1:
    raise ValueError(
      f'{path}: {src} has shape {pos.shape}, not [1, tokens, width]'
    )
  patch = model['embedding/kernel'].shape[:2]
  grid = (image_hw[0] // patch[0], image_hw[1] // patch[1])
  if grid[0] * grid[1] + int(model_has_cls) != shape[1]:
    raise ValueError(
      f'image_size {tuple(image_hw)} with patch {tuple(patch)} gives a '
      f'{grid[0]}x{grid[1]} grid, but the model has {shape[1]} position '
      f'embeddings ({POS} {tuple(shape)})'
    )
  rows = pos.shape[1]
  if _square_side(rows) is not None:
    cls_row, patches = None, pos[0]
  elif _square_side(rows - 1) is not None:
    cls_row, patches = pos[0, :1], pos[0, 1:]
  else:
    raise ValueError(
      f'{path}: {src} {pos.shape} is neither a square grid nor a class '
      f'token plus a square grid, model {POS} {tuple(shape)}'
    )
  side = _square_side(len(patches))
  how = src
  if (side, side) != grid:
    resize_fn = resize_bicubic if resize == 'bicubic' else resize_bilinear
    patches = resize_fn(patches.reshape(side, side, -1), grid)
    patches = patches.reshape(grid[0] * grid[1], -1)
    adverb = {'bilinear': 'bilinearly', 'bicubic': 'bicubically'}[resize]
    how += f' (grid {side}x{side} resized {adverb} to {grid[0]}x{grid[1]})'
  if model_has_cls:
    if cls_row is None:
      cls_row = np.zeros((1, pos.shape[2]), pos.dtype)
      how += ' (no class token row: zero, as cls already holds it)'
    patches = np.concatenate([cls_row, patches.astype(pos.dtype)])
  elif cls_row is not None:
    how += ' (class token row dropped: this ViT pools by gap)'
  return patches[None], how


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_in, n_out] weights of 1-D linear resampling, pixel centres aligned.

  Output sample i sits at input coordinate (i + 0.5) n_in / n_out - 0.5; a
  triangle kernel, widened by n_in / n_out when shrinking (antialiasing), and
  weights normalised to sum to 1 (so edges repeat the border value). These are
  the weights of jax.image.resize(method='bilinear').
  """
  scale = n_out / n_in
  width = max(1.0 / scale, 1.0)
  centres = (np.arange(n_out) + 0.5) / scale - 0.5
  distance = np.abs(centres[None, :] - np.arange(n_in)[:, None]) / width
  weights = np.maximum(0.0, 1.0 - distance)
  return weights / weights.sum(0, keepdims=True)


def resize_bilinear(grid: np.ndarray, size) -> np.ndarray:
  """A [h, w, D] grid resized to [size[0], size[1], D], in float32."""
  w_h = _linear_weights(grid.shape[0], size[0]).astype(np.float32)
  w_w = _linear_weights(grid.shape[1], size[1]).astype(np.float32)
  return np.einsum('ai,bj,abd->ijd', w_h, w_w, grid.astype(np.float32))


def _cubic_weights(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """[n_in, n_out] weights of torch's 1-D bicubic resampling.

  F.interpolate(mode='bicubic', align_corners=False): output sample i sits at
  input coordinate (i + 0.5) n_in / n_out - 0.5; Keys' cubic kernel with
  a = -0.75 over the 4 nearest inputs, indices clamped at the borders, no
  antialiasing when shrinking.
  """
  weights = np.zeros((n_in, n_out), np.float64)
  for i in range(n_out):
    x = (i + 0.5) * n_in / n_out - 0.5
    base = int(np.floor(x))
    t = x - base
    for k in range(-1, 3):
      d = abs(t - k)
      if d <= 1:
        w = (a + 2) * d**3 - (a + 3) * d**2 + 1
      elif d < 2:
        w = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
      else:
        w = 0.0
      weights[min(max(base + k, 0), n_in - 1), i] += w
  return weights


def resize_bicubic(grid: np.ndarray, size) -> np.ndarray:
  """A [h, w, D] grid resized bicubically to [size[0], size[1], D], float32."""
  w_h = _cubic_weights(grid.shape[0], size[0]).astype(np.float32)
  w_w = _cubic_weights(grid.shape[1], size[1]).astype(np.float32)
  return np.einsum('ai,bj,abd->ijd', w_h, w_w, grid.astype(np.float32))


def _check_shape(got, want, src, dst, path):
  if tuple(got) != tuple(want):
    raise ValueError(
      f'{path}: tensor {src} has shape {tuple(got)}, but {dst} needs '
      f'{tuple(want)}'
    )
