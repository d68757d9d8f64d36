"""Exports a training workdir's checkpoint as a self-contained inference bundle.

  python tools/export.py --workdir=/tmp/demo --out=/tmp/model
  python tools/export.py --workdir=/tmp/demo --step=500 --out=/tmp/model500

MODEL (--out) gets model.json, weights.npz (the EMA parameters and BatchNorm
statistics) and predict.jaxexport (the inference function, serialised with
jax.export, any batch size); layermatch_jax/bundle.py describes them. The
bundle runs with `tools/predict.py --model=MODEL IMAGES...` or
`layermatch_jax.bundle.load_bundle(MODEL)`, which need jax, numpy and PIL but
not flax, the model code or the configs. Prints one JSON object on stdout:

  {"model", "step", "workdir", "platforms", "num_classes", "class_names", "image_size", "files"}

MODEL must not exist or be an empty directory: a bundle is never overwritten,
and is written whole (renamed into place when complete). Bad input ends with
one line `error: ...` on stderr, exit status 2, and nothing written.
"""

import argparse
import contextlib
import json
import os
import signal
import sys

# Runs as a script from the repo root without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from layermatch_jax import predict  # pylint: disable=g-import-not-at-top


def fail(message) -> None:
  """The one-line error contract of layermatch_jax.main: stderr, exit status 2."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def export(workdir: str, out: str, step=None) -> dict:
  """Writes the bundle; returns what the command line prints. PredictError on bad input."""
  from layermatch_jax import bundle  # pylint: disable=g-import-not-at-top
  meta = bundle.export_bundle(workdir, out, step)
  out = os.path.abspath(out)
  return {'model': out, 'step': meta['source']['step'], 'workdir': meta['source']['workdir'],
          'platforms': meta['platforms'], 'num_classes': meta['num_classes'],
          'class_names': meta['class_names'], 'image_size': meta['image_size'],
          'files': sorted(os.listdir(out))}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  # argparse's own errors are a usage block; the contract is one line.
  parser.error = fail
  parser.add_argument('--workdir', required=True, help='A training workdir.')
  parser.add_argument('--out', required=True, help='The bundle directory to create.')
  parser.add_argument('--step', type=int, default=None,
                      help='Checkpoint step (default: the latest saved).')
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top
  # orbax logs every restore at INFO.
  logging.set_verbosity(logging.WARNING)
  try:
    # stdout carries only the JSON object: anything printed on the way goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
      result = export(args.workdir, args.out, args.step)
  except predict.PredictError as e:
    fail(e)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)
  main()
