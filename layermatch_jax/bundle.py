"""A trained model as a self-contained inference bundle.

  bundle.export_bundle('/tmp/demo', '/tmp/model')       # or a predict.Predictor
  model = bundle.load_bundle('/tmp/model')
  model.predict_files(paths); model.predict_arrays(images)   # as predict.Predictor

MODEL/ holds three files:

  model.json        format and version, class_names, image_size, mean, std,
                    num_classes, the run it came from (workdir, step, model),
                    jax version, platforms, the weights' tree paths
  weights.npz       the EMA parameters and BatchNorm statistics as flat arrays
                    w00000, w00001, ... in the tree-flatten order of
                    {'params', 'batch_stats'} (model.json names each)
  predict.jaxexport the inference function serialised by jax.export (StableHLO):
                    fn(weights list, uint8 images [b, H, W, 3]) -> softmax
                    probabilities float32 [b, K]; normalisation inside; b is
                    symbolic, so any batch size runs

Loading needs only jax, numpy, PIL and this package's decoder
(data/sources.py): not flax, the model code or the configs. The function is
exported for CPU, CUDA and TPU when this machine can lower for all three (a
bundle made on a CPU then runs on an accelerator), else for this machine's
platform only; model.json says which (and why, in platform_note).

An export never overwrites: MODEL must not exist or be empty. It is written
into a hidden sibling directory, checked by loading it back, and renamed into
place, so a failure leaves nothing behind.
"""

import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

import jax
import numpy as np

from layermatch_jax import cli_util
from layermatch_jax import predict

FORMAT = 'layermatch_jax.bundle'
FORMAT_VERSION = 1
MODEL_FILE = 'model.json'
WEIGHTS_FILE = 'weights.npz'
FUNCTION_FILE = 'predict.jaxexport'
PLATFORMS = ('cpu', 'cuda', 'tpu')
# Loading the bundle back must reproduce the predictor's probabilities.
VERIFY_TOLERANCE = 1e-5


class BundleError(predict.PredictError):
  """A bundle that cannot be written or read; the message is one line."""


def _weight_key(i: int) -> str:
  return f'w{i:05d}'


def _export(fn, weights, image_size: int, platforms: Sequence[str]):
  """fn exported with a symbolic batch dimension for `platforms`."""
  (b,) = jax.export.symbolic_shape('b')
  specs = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
  images = jax.ShapeDtypeStruct((b, image_size, image_size, 3), np.uint8)
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
    specs, images
  )


def check_out_dir(out_dir: str) -> str:
  """`out_dir` made absolute if a bundle may be written there; BundleError otherwise."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (
    not os.path.isdir(out_dir) or os.listdir(out_dir)
  ):
    raise BundleError(
      f'{out_dir} exists and is not an empty directory: give a new --out '
      '(a bundle is never overwritten)'
    )
  parent = os.path.dirname(out_dir)
  if not os.path.isdir(parent):
    raise BundleError(
      f'directory {parent} does not exist: create it, or give another --out'
    )
  return out_dir


def export_bundle(
  predictor_or_workdir,
  out_dir: str,
  step: Optional[int] = None,
  platforms: Sequence[str] = PLATFORMS,
) -> dict:
  """Writes the bundle MODEL = `out_dir`; returns its model.json contents.

  `predictor_or_workdir`: a predict.Predictor, or a workdir whose checkpoint at
  `step` (default the latest) is exported. Raises PredictError (BundleError for
  the output) on bad input, before anything is written.
  """
  out_dir = check_out_dir(out_dir)
  if isinstance(predictor_or_workdir, predict.Predictor):
    predictor = predictor_or_workdir
    if step is not None and step != predictor.step:
      raise BundleError(
        f'step={step} given with a predictor of step {predictor.step}'
      )
  else:
    predictor = predict.Predictor.from_workdir(predictor_or_workdir, step)
  fn, weights, names = predictor.export_function()
  here = jax.export.default_export_platform()
  platforms = list(platforms) + ([here] if here not in platforms else [])
  fallback = None
  try:
    exported = _export(fn, weights, predictor.image_size, platforms)
  except Exception as e:  # pylint: disable=broad-except
    # Lowering for a platform this jaxlib cannot target: export for this one.
    fallback = (
      f'exported for {here} only: lowering for {", ".join(platforms)} failed '
      f'({type(e).__name__}: {cli_util.one_line(e)[:300]})'
    )
    try:
      exported = _export(fn, weights, predictor.image_size, [here])
    except Exception as e2:  # pylint: disable=broad-except
      raise BundleError(
        f'could not export the model for {here}: {type(e2).__name__}: '
        f'{cli_util.one_line(e2)[:300]}'
      ) from e2
  meta = dict(
    format=FORMAT,
    format_version=FORMAT_VERSION,
    class_names=list(predictor.class_names),
    num_classes=predictor.num_classes,
    image_size=predictor.image_size,
    mean=list(predictor.mean),
    std=list(predictor.std),
    source=dict(
      workdir=os.path.abspath(predictor.workdir) if predictor.workdir else None,
      step=predictor.step,
      model=predictor.config.model.name,
      algorithm=predictor.config.algorithm,
      dataset=predictor.config.data.name,
    ),
    jax_version=jax.__version__,
    platforms=list(exported.platforms),
    weights=names,
  )
  if fallback:
    meta['platform_note'] = fallback

  tmp = tempfile.mkdtemp(
    prefix=f'.{os.path.basename(out_dir)}.tmp-', dir=os.path.dirname(out_dir)
  )
  try:
    # mkdtemp's 0700 would follow the rename: give MODEL the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    np.savez(
      os.path.join(tmp, WEIGHTS_FILE),
      **{_weight_key(i): w for i, w in enumerate(weights)},
    )
    with open(os.path.join(tmp, FUNCTION_FILE), 'wb') as f:
      f.write(exported.serialize())
    with open(os.path.join(tmp, MODEL_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
      f.write('\n')
    _verify(predictor, load_bundle(tmp))
    # Refused if MODEL appeared meanwhile and is not empty: nothing overwritten.
    os.rename(tmp, out_dir)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, OSError):
      raise BundleError(
        f'could not write {out_dir}: {cli_util.one_line(e)}'
      ) from e
    raise
  return meta


def _verify(predictor, bundle):
  """The bundle must give the predictor's probabilities (on a fixed batch)."""
  s = predictor.image_size
  images = np.random.default_rng(0).integers(
    0, 256, (2, s, s, 3), dtype=np.uint8
  )
  want = predictor.predict_arrays(images)
  got = bundle.predict_arrays(images)
  err = float(np.max(np.abs(want - got)))
  if not err <= VERIFY_TOLERANCE:
    raise BundleError(
      f'the exported function does not reproduce the checkpoint (max '
      f'difference {err:.3g}): not written'
    )


class Bundle(predict.ImageClassifier):
  """A loaded bundle: predict_files / predict_arrays as predict.Predictor.

  Attributes: model_dir, meta (model.json), class_names, image_size, platforms.
  """

  def __init__(self, model_dir: str, meta: dict, weights, exported):
    self.model_dir = model_dir
    self.meta = meta
    self.class_names = list(meta['class_names'])
    self.image_size = int(meta['image_size'])
    self.mean, self.std = (
      meta.get('mean'),
      meta.get('std'),
    )  # Informative: applied inside.
    self.platforms = tuple(exported.platforms)
    device = jax.local_devices()[0]
    self._weights = [jax.device_put(w, device) for w in weights]
    self._fn = jax.jit(exported.call)

  def _probabilities(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._fn(self._weights, images))


def _read_meta(model_dir: str) -> dict:
  path = os.path.join(model_dir, MODEL_FILE)
  meta = cli_util.read_json(
    path,
    BundleError,
    missing='--model must be a directory written by tools/export.py',
  )
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    raise BundleError(
      f'{path} is not a layermatch_jax bundle (format {FORMAT!r} expected)'
    )
  version = meta.get('format_version')
  if version != FORMAT_VERSION:
    raise BundleError(
      f'{path} has format_version {version!r}; this code reads version '
      f'{FORMAT_VERSION}: export the bundle again with this code'
    )
  names, size = meta.get('class_names'), meta.get('image_size')
  if (
    not isinstance(names, list)
    or not names
    or not all(isinstance(n, str) for n in names)
    or not isinstance(size, int)
    or size <= 0
  ):
    raise BundleError(
      f'{path} is damaged: class_names and image_size are missing or invalid'
    )
  return meta


def _read_weights(model_dir: str) -> list:
  path = os.path.join(model_dir, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise BundleError(f'{path} does not exist: the bundle is incomplete')
  try:
    with np.load(path, allow_pickle=False) as npz:
      count = len(npz.files)
      if sorted(npz.files) != [_weight_key(i) for i in range(count)]:
        raise ValueError(f'unexpected array names {npz.files[:3]}...')
      return [npz[_weight_key(i)] for i in range(count)]
  except Exception as e:  # pylint: disable=broad-except
    # zipfile, numpy and OS errors alike: a damaged file.
    raise BundleError(f'{path} is damaged: {cli_util.one_line(e)}') from e


def _read_function(model_dir: str):
  path = os.path.join(model_dir, FUNCTION_FILE)
  if not os.path.isfile(path):
    raise BundleError(f'{path} does not exist: the bundle is incomplete')
  try:
    with open(path, 'rb') as f:
      return jax.export.deserialize(bytearray(f.read()))
  except Exception as e:  # pylint: disable=broad-except
    raise BundleError(
      f'{path} is damaged: {type(e).__name__}: {cli_util.one_line(e)[:200]}'
    ) from e


def load_bundle(model_dir: str) -> Bundle:
  """Reads MODEL (as written by export_bundle); BundleError if it is unusable here."""
  if not os.path.isdir(model_dir):
    raise BundleError(
      f'--model={model_dir} is not a directory: give a bundle written by '
      'tools/export.py'
    )
  meta = _read_meta(model_dir)
  weights = _read_weights(model_dir)
  exported = _read_function(model_dir)
  here = jax.export.default_export_platform()
  if here not in exported.platforms:
    raise BundleError(
      f'{model_dir} was exported for {", ".join(exported.platforms)}, not for '
      f'this machine ({here}): export it again here'
    )
  # The function must take exactly these weights and images of the bundle's size.
  *weight_avals, image_aval = exported.in_avals
  size, k = meta['image_size'], len(meta['class_names'])
  fits = (
    len(weight_avals) == len(weights)
    and all(
      a.shape == w.shape and a.dtype == w.dtype
      for a, w in zip(weight_avals, weights)
    )
    and image_aval.shape[1:] == (size, size, 3)
    and len(exported.out_avals) == 1
    and exported.out_avals[0].shape[1:] == (k,)
  )
  if not fits:
    raise BundleError(
      f'{model_dir} is inconsistent: {FUNCTION_FILE} does not take the arrays '
      f'of {WEIGHTS_FILE} and {size}x{size} images to {k} classes'
    )
  return Bundle(model_dir, meta, weights, exported)
