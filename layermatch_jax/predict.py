"""Classifies image files with a trained run.

  predictor = predict.Predictor.from_workdir('/tmp/demo')       # latest checkpoint
  paths = predict.expand_inputs(['photos/', 'more/*.jpg', 'one.png'])
  for p in predictor.predict_files(paths):
    p.path, p.class_name, p.confidence, p.top_k     # top_k: [(name, probability)]
  probs = predictor.predict_arrays(images)          # uint8 [N, H, W, 3] -> [N, K]

What is evaluated is what tools/evaluate.py evaluates: the EMA parameters with
the BatchNorm running statistics (evaluation.predict, use_ema=True), on one
device. Each file is preprocessed exactly as training data is:
data.sources.decode_file (EXIF-rotated, RGB, squashed bicubic to
data.image_size square, uint8); the model normalises with data.mean/std.

Batches have a fixed size so that one compiled program serves a whole call:
the last batch is padded. A call with fewer images than `batch_size` uses the
next power of two at or above their count instead (one image does not cost a
full batch; at most log2(batch_size) + 1 shapes are ever compiled).

Bad input raises `PredictError`, one line naming the path or value.

Only `Predictor.from_workdir` imports flax and the model code: `ImageClassifier`
and the helpers here are shared with bundle.py, which must run without them.
"""

import dataclasses
import functools
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from layermatch_jax import cli_util
from layermatch_jax.data import sources

DEFAULT_BATCH_SIZE = 64
DEFAULT_TOP_K = 3  # Capped at the number of classes.


class PredictError(ValueError):
  """A bad input path, image, value or model; the message is one line."""


# --------------------------------------------------------------------------
# Inputs.


def _folder_images(folder: str) -> List[str]:
  # Imported on use: the folder loader pulls in absl, which a bundle need not.
  from layermatch_jax.data import folder as folder_lib  # pylint: disable=g-import-not-at-top

  files = folder_lib.image_files(folder)
  if not files:
    raise PredictError(
      f'folder {folder} has no image files (by extension: '
      f'{", ".join(sorted(folder_lib.IMAGE_EXTENSIONS))})'
    )
  return files


def _has_magic(arg: str) -> bool:
  return any(c in arg for c in '*?[')


def expand_inputs(args: Sequence[str]) -> List[str]:
  """Files, folders and glob patterns -> image paths, in order, without repeats.

  A file is taken whatever its extension (PIL decides if it is an image). A
  folder gives its image files, recursively and sorted, by the folder
  loader's extension rule (data/folder.py). A pattern the shell did not expand
  (quoted, or matching nothing there) is expanded with glob, `**` included,
  and each match treated as above. A path that does not exist, a pattern that
  matches nothing and a folder without images are errors.
  """
  import glob  # pylint: disable=g-import-not-at-top

  paths, seen = [], set()

  def add(path):
    key = os.path.abspath(path)
    if key not in seen:
      seen.add(key)
      paths.append(path)

  def expand(arg, from_pattern=False):
    if os.path.isdir(arg):
      for path in _folder_images(arg):
        add(path)
    elif os.path.exists(arg):
      add(arg)
    elif not from_pattern and _has_magic(arg):
      matches = sorted(glob.glob(arg, recursive=True))
      if not matches:
        raise PredictError(f'{arg} matches no file')
      for match in matches:
        expand(match, from_pattern=True)
    else:
      raise PredictError(f'{arg} does not exist')

  for arg in args:
    expand(arg)
  if not paths:
    raise PredictError('no images given')
  return paths


# --------------------------------------------------------------------------
# Results.


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One image's result; `top_k` is [(class name, probability)], best first."""

  path: str
  class_index: int
  class_name: str
  confidence: float  # The softmax probability of the predicted class.
  top_k: List[Tuple[str, float]]
  probabilities: np.ndarray  # float32 [K].


class Predictions(list):
  """A list of `Prediction`s, plus `skipped`: [(path, why)] of unreadable files."""

  def __init__(self, items=(), skipped=()):
    super().__init__(items)
    self.skipped = list(skipped)


def _padded(images: np.ndarray, size: int) -> np.ndarray:
  pad = size - len(images)
  if not pad:
    return images
  return np.concatenate(
    [images, np.zeros((pad, *images.shape[1:]), images.dtype)]
  )


def _batch_shape(count: int, batch_size: int) -> int:
  """The one batch size a call of `count` images runs at (see the module doc)."""
  return min(batch_size, 1 << max(count - 1, 0).bit_length())


def _decode(path: str, size: int):
  """(image, None) or (None, why)."""
  try:
    return sources.decode_file(path, size), None
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises many kinds: OSError, SyntaxError, ValueError, DecompressionBombError.
    return None, cli_util.one_line(f'{type(e).__name__}: {e}')


class ImageClassifier:
  """Batching, decoding and result records over a probability function.

  Subclasses set `class_names`, `image_size` and implement
  `_probabilities(uint8 [B, H, W, 3]) -> float32 [B, K]`.
  """

  class_names: List[str]
  image_size: int

  def _probabilities(self, images: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def _check_batch_size(self, batch_size):
    if (
      isinstance(batch_size, bool)
      or not isinstance(batch_size, int)
      or batch_size < 1
    ):
      raise PredictError(
        f'batch_size={batch_size!r} is not valid: use a positive integer'
      )

  def _run(self, images: np.ndarray, size: int) -> np.ndarray:
    """Probabilities of `images` in batches of exactly `size` (the last padded)."""
    out = []
    for start in range(0, len(images), size):
      x = images[start : start + size]
      out.append(
        np.asarray(self._probabilities(_padded(x, size)), np.float32)[: len(x)]
      )
    return (
      np.concatenate(out)
      if out
      else np.zeros((0, self.num_classes), np.float32)
    )

  def predict_arrays(
    self, images, batch_size: int = DEFAULT_BATCH_SIZE
  ) -> np.ndarray:
    """Softmax probabilities float32 [N, K] of uint8 images [N, H, W, 3].

    The images must already be image_size square (decode_file or
    sources.resize_array make them so).
    """
    self._check_batch_size(batch_size)
    images = np.asarray(images)
    s = self.image_size
    if (
      images.dtype != np.uint8
      or images.ndim != 4
      or images.shape[1:] != (s, s, 3)
    ):
      raise PredictError(
        f'images must be uint8 [N, {s}, {s}, 3], got {images.dtype} '
        f'{list(images.shape)}'
      )
    return self._run(images, _batch_shape(len(images), batch_size))

  def check_top_k(self, top_k: Optional[int]) -> int:
    """`top_k`, or the default min(3, classes); PredictError if out of range."""
    if top_k is None:
      return min(DEFAULT_TOP_K, self.num_classes)
    if (
      isinstance(top_k, bool)
      or not isinstance(top_k, int)
      or not 1 <= top_k <= self.num_classes
    ):
      raise PredictError(
        f'top_k={top_k!r} is not valid: use 1 to {self.num_classes} (the '
        'number of classes)'
      )
    return top_k

  def record(
    self, path: str, probabilities: np.ndarray, top_k: int
  ) -> Prediction:
    p = np.asarray(probabilities, np.float32)
    # Stable: equal probabilities are listed in class order.
    order = np.argsort(-p, kind='stable')[:top_k]
    best = int(order[0])
    return Prediction(
      path=path,
      class_index=best,
      class_name=self.class_names[best],
      confidence=float(p[best]),
      top_k=[(self.class_names[int(c)], float(p[c])) for c in order],
      probabilities=p,
    )

  def predict_files(
    self,
    paths: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip_bad_files: bool = False,
    top_k: Optional[int] = None,
  ) -> Predictions:
    """Predictions for image files, in order (see expand_inputs for folders).

    An unreadable file raises PredictError naming it, or, with
    `skip_bad_files`, is left out and listed in the result's `skipped`.
    """
    self._check_batch_size(batch_size)
    top_k = self.check_top_k(top_k)
    paths = list(paths)
    size = _batch_shape(len(paths), batch_size)
    result = Predictions()
    # Decoding releases the GIL in PIL: the next batch decodes while one runs.
    pool = sources.decode_pool()
    decode = functools.partial(_decode, size=self.image_size)
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    pending = [pool.map(decode, chunks[0])] if chunks else []
    for i, chunk in enumerate(chunks):
      decoded = list(pending.pop())
      if i + 1 < len(chunks):
        pending.append(pool.map(decode, chunks[i + 1]))
      good = []
      for path, (image, why) in zip(chunk, decoded):
        if image is not None:
          good.append((path, image))
        elif skip_bad_files:
          result.skipped.append((path, why))
        else:
          _drain(pending)
          raise PredictError(
            f'cannot read image {path} ({why}): remove it from the inputs, '
            'or skip unreadable files (--skip_bad_files)'
          )
      if good:
        probs = self._run(np.stack([image for _, image in good]), size)
        result.extend(
          self.record(path, p, top_k) for (path, _), p in zip(good, probs)
        )
    return result


def _drain(pending):
  """Waits for decodes still running, so none outlives the error."""
  for results in pending:
    list(results)


# --------------------------------------------------------------------------
# A training workdir.


def probabilities(state, images, mean, std):
  """Softmax of the EMA model's logits: what tools/evaluate.py's argmax reads."""
  import jax  # pylint: disable=g-import-not-at-top
  from layermatch_jax import evaluation  # pylint: disable=g-import-not-at-top

  return jax.nn.softmax(
    evaluation.predict(state, images, mean, std, use_ema=True), axis=-1
  )


class Predictor(ImageClassifier):
  """A workdir's checkpoint on one device (jax.jit), for new images.

  Attributes: workdir, step, config, class_names, image_size, mean, std.
  """

  def __init__(
    self,
    state,
    config,
    class_names: Sequence[str],
    mean,
    std,
    workdir: Optional[str] = None,
    step: Optional[int] = None,
  ):
    """`state`: an unreplicated TrainState (host or device arrays)."""
    import jax  # pylint: disable=g-import-not-at-top

    self.config = config
    self.workdir = workdir
    self.step = step
    self.class_names = list(class_names)
    self.image_size = int(config.data.image_size)
    self.mean = tuple(float(m) for m in mean)
    self.std = tuple(float(s) for s in std)
    # Only what inference reads: the optimizer state, live parameters, centres
    # and policy state would just take device memory.
    slim = state.replace(
      step=None,
      params=None,
      opt_state=None,
      cluster=None,
      rng=None,
      policy=None,
    )
    self._state = jax.device_put(slim, jax.local_devices()[0])
    self._fn = jax.jit(
      functools.partial(probabilities, mean=self.mean, std=self.std)
    )

  @classmethod
  def from_workdir(
    cls, workdir: str, step: Optional[int] = None, notes: Optional[list] = None
  ) -> 'Predictor':
    """The run's checkpoint at `step` (default the latest), read-only.

    The class names come from WORKDIR/data_summary.json; a run older than that
    file has its data source loaded for them (the data must then be there).
    """
    from layermatch_jax import saved_run  # pylint: disable=g-import-not-at-top

    try:
      config = saved_run.load_config(workdir, notes)
      step = saved_run.resolve_step(
        workdir, step
      )  # A quick answer before JAX starts.
      run = saved_run.SavedRun(workdir, config=config, load_data=False)
      state, step = run.restore(step, replicate=False)
    except saved_run.RunError as e:
      raise PredictError(cli_util.one_line(e)) from e
    sc = run.learner.step_config
    return cls(
      state,
      run.config,
      run.class_names,
      sc.mean,
      sc.std,
      workdir=workdir,
      step=step,
    )

  def _probabilities(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._fn(self._state, images))

  def export_function(self):
    """(fn, weights, names) for bundle.py: fn(weights, uint8 images) -> probabilities.

    `weights` are the EMA parameters and BatchNorm statistics as a flat list
    of host arrays in tree-flatten order of {'params', 'batch_stats'}; `names`
    are their tree paths.
    """
    import jax  # pylint: disable=g-import-not-at-top

    # Named as Flax names the variables: the paths in model.json read as such.
    tree = {
      'params': self._state.ema_params,
      'batch_stats': self._state.batch_stats,
    }
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [jax.tree_util.keystr(path) for path, _ in leaves]
    weights = [np.asarray(leaf) for _, leaf in leaves]
    skeleton = self._state.replace(ema_params=None, batch_stats=None)
    mean, std = self.mean, self.std

    def fn(flat, images):
      tree = jax.tree.unflatten(treedef, flat)
      state = skeleton.replace(
        ema_params=tree['params'], batch_stats=tree['batch_stats']
      )
      return probabilities(state, images, mean, std)

    return fn, weights, names
