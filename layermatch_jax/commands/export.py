"""Exports a training workdir's checkpoint as a self-contained inference bundle.

  layermatch-export --workdir=/tmp/demo --out=/tmp/model    # or: python tools/export.py ...
  layermatch-export --workdir=/tmp/demo --step=500 --out=/tmp/model500

MODEL (--out) gets model.json, weights.npz (the EMA parameters and BatchNorm
statistics) and predict.jaxexport (the inference function, serialised with
jax.export, any batch size); layermatch_jax/bundle.py describes them. The
bundle runs with `layermatch-predict --model=MODEL IMAGES...` or
`layermatch_jax.bundle.load_bundle(MODEL)`, which need jax, numpy and PIL but
not flax, the model code or the configs. Prints one JSON object on stdout:

  {"model", "step", "workdir", "platforms", "num_classes", "class_names", "image_size", "files"}

MODEL must not exist or be an empty directory: a bundle is never overwritten,
and is written whole (renamed into place when complete). Bad input ends with
one line `error: ...` on stderr, exit status 2, and nothing written.
"""

import contextlib
import json
import os
import sys

from layermatch_jax import cli_util
from layermatch_jax import predict


def export(workdir: str, out: str, step=None) -> dict:
  """Writes the bundle; returns what the command line prints. PredictError on bad input."""
  from layermatch_jax import bundle  # pylint: disable=g-import-not-at-top

  meta = bundle.export_bundle(workdir, out, step)
  out = os.path.abspath(out)
  return {
    'model': out,
    'step': meta['source']['step'],
    'workdir': meta['source']['workdir'],
    'platforms': meta['platforms'],
    'num_classes': meta['num_classes'],
    'class_names': meta['class_names'],
    'image_size': meta['image_size'],
    'files': sorted(os.listdir(out)),
  }


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--workdir', required=True, help='A training workdir.')
  parser.add_argument(
    '--out', required=True, help='The bundle directory to create.'
  )
  parser.add_argument(
    '--step',
    type=int,
    default=None,
    help='Checkpoint step (default: the latest saved).',
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command line; raises ToolError or PredictError on bad input (see run)."""
  args = parse_args(argv)
  from absl import logging  # pylint: disable=g-import-not-at-top

  # orbax logs every restore at INFO.
  logging.set_verbosity(logging.WARNING)
  # stdout carries only the JSON object: anything printed on the way goes to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    result = export(args.workdir, args.out, args.step)
  print(json.dumps(result, indent=2))


def run(argv=None):
  """`layermatch-export`: main with bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv, errors=(predict.PredictError,))
