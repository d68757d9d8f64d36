"""Classifies images with a trained run's checkpoint or an exported bundle.

  layermatch-predict --workdir=/tmp/demo photos/ more/*.jpg   # or: python tools/predict.py ...
  layermatch-predict --workdir=/tmp/demo --step=500 --min_confidence=0.9 \
      --csv=/tmp/preds.csv --jsonl=/tmp/preds.jsonl 'photos/**/*.png'
  layermatch-predict --model=/tmp/model photos/       # a bundle from layermatch-export

IMAGES are files (any format PIL reads, whatever the extension), folders (their
image files, recursively and sorted, by the extensions the training folder
loader counts) and glob patterns (`**` included; quoted, the tool expands
them). Repeats are dropped; the order is kept. Each image is preprocessed as
the training data was, and the EMA model evaluated as layermatch-evaluate does.

Output, one row per image. The CSV's columns:

  path, prediction, confidence, status, top2, top2_confidence, ..., topK, topK_confidence

`prediction`/`confidence` are the top-1 class and its softmax probability;
`status` is `ok`, or `uncertain` where confidence < --min_confidence (for a
person to check); topN is the N-th most probable class (K = --top_k, default
min(3, classes)). --jsonl writes one JSON object per image with the same
fields and the top-k list, best first:

  {"path", "prediction", "confidence", "status", "top_k": [{"class", "confidence"}, ...]}

Without --csv or --jsonl the CSV goes to stdout. Files are written whole (a
temporary file renamed into place) and an existing one is refused unless
--overwrite. Probabilities are written as the shortest decimal that reads back
as the same float32; status compares that value.

An unreadable image is an error, or with --skip_bad_files is left out and
listed on stderr as `skipped: PATH (why)`. Bad input ends with one line
`error: ...` on stderr, exit status 2, and nothing written.
"""

import contextlib
import csv
import io
import json
import os
import sys

from layermatch_jax import cli_util
from layermatch_jax import predict


def probability(value) -> float:
  """`value` as the shortest decimal that reads back as the same float32."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  return float(str(np.float32(value)))


def rows(predictions, min_confidence: float) -> list:
  """The output's records: dicts with the JSONL's fields."""
  out = []
  for p in predictions:
    confidence = probability(p.confidence)
    out.append(
      dict(
        path=p.path,
        prediction=p.class_name,
        confidence=confidence,
        status='uncertain' if confidence < min_confidence else 'ok',
        top_k=[
          {'class': name, 'confidence': probability(q)} for name, q in p.top_k
        ],
      )
    )
  return out


def csv_text(records, top_k: int) -> str:
  header = ['path', 'prediction', 'confidence', 'status']
  for n in range(2, top_k + 1):
    header += [f'top{n}', f'top{n}_confidence']
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(header)
  for r in records:
    row = [r['path'], r['prediction'], r['confidence'], r['status']]
    for t in r['top_k'][1:]:
      row += [t['class'], t['confidence']]
    writer.writerow(row)
  return buffer.getvalue()


def jsonl_text(records) -> str:
  return ''.join(json.dumps(r) + '\n' for r in records)


def check_output(path: str, overwrite: bool, flag: str) -> str:
  """The absolute path if it may be written; raises PredictError otherwise."""
  full = os.path.abspath(path)
  if os.path.isdir(full):
    raise predict.PredictError(
      f'{flag}={path} is a directory: give a file path'
    )
  if os.path.exists(full) and not overwrite:
    raise predict.PredictError(
      f'{flag}={path} exists: give a new path, or pass --overwrite'
    )
  parent = os.path.dirname(full)
  if not os.path.isdir(parent):
    raise predict.PredictError(
      f'{flag}={path}: directory {parent} does not exist'
    )
  return full


def write_all(files: dict):
  """Writes {path: text}: every temporary file first, then each renamed into place
  (a failed write replaces none)."""
  try:
    with contextlib.ExitStack() as stack:
      for path, text in files.items():
        stack.enter_context(cli_util.atomic_write(path, 'w', newline='')).write(
          text
        )
  except OSError as e:
    raise predict.PredictError(
      f'could not write {e.filename or ""}: {e.strerror or e}'
    ) from e


def load_classifier(args, notes: list):
  if args.model is not None:
    from layermatch_jax import bundle  # pylint: disable=g-import-not-at-top

    return bundle.load_bundle(args.model)
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  return predict.Predictor.from_workdir(args.workdir, args.step, notes)


def predict_and_write(args) -> dict:
  """Predicts and writes; returns {'stdout': text, 'stderr': [lines]} to print.

  Raises PredictError on bad input, before anything is written.
  """
  if (args.workdir is None) == (args.model is None):
    raise predict.PredictError(
      'give exactly one of --workdir (a training run) and --model '
      '(a bundle from tools/export.py)'
    )
  if args.step is not None and args.model is not None:
    raise predict.PredictError(
      '--step is for --workdir: a bundle holds one checkpoint'
    )
  if not 0.0 <= args.min_confidence <= 1.0:  # False for NaN too.
    raise predict.PredictError(
      f'--min_confidence={args.min_confidence} is not valid: '
      'use a probability in [0, 1]'
    )
  if args.top_k is not None and args.top_k < 1:
    raise predict.PredictError(
      f'--top_k={args.top_k} is not valid: use a positive integer'
    )
  if args.batch_size < 1:
    raise predict.PredictError(
      f'--batch_size={args.batch_size} is not valid: use a positive integer'
    )
  outputs = {}
  for flag, path in (('--csv', args.csv), ('--jsonl', args.jsonl)):
    if path is not None:
      full = check_output(path, args.overwrite, flag)
      if full in outputs:
        raise predict.PredictError(
          f'--csv and --jsonl name the same file {path}'
        )
      outputs[full] = flag
  paths = predict.expand_inputs(args.images)
  notes = []  # Config keys newer than the run, filled from configs/default.py.
  classifier = load_classifier(args, notes)
  if args.top_k is not None and args.top_k > classifier.num_classes:
    raise predict.PredictError(
      f'--top_k={args.top_k} is not valid: the model has '
      f'{classifier.num_classes} classes'
    )
  top_k = classifier.check_top_k(args.top_k)
  result = classifier.predict_files(
    paths,
    batch_size=args.batch_size,
    skip_bad_files=args.skip_bad_files,
    top_k=top_k,
  )
  if not result:
    path, why = result.skipped[0]
    raise predict.PredictError(
      f'none of the {len(paths)} images could be read (first: {path}: {why})'
    )
  records = rows(result, args.min_confidence)
  texts = {'--csv': csv_text(records, top_k), '--jsonl': jsonl_text(records)}
  write_all({path: texts[flag] for path, flag in outputs.items()})
  stderr = notes + [f'skipped: {path} ({why})' for path, why in result.skipped]
  if outputs:
    uncertain = sum(r['status'] == 'uncertain' for r in records)
    stderr.append(
      f'wrote {len(records)} predictions ({uncertain} uncertain) to '
      f'{", ".join(outputs)}'
    )
  return {'stdout': '' if outputs else texts['--csv'], 'stderr': stderr}


def parse_args(argv):
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument(
    'images',
    nargs='+',
    metavar='IMAGES',
    help='Image files, folders or glob patterns.',
  )
  parser.add_argument('--workdir', default=None, help='A training workdir.')
  parser.add_argument(
    '--model', default=None, help='A bundle written by tools/export.py.'
  )
  parser.add_argument(
    '--step',
    type=int,
    default=None,
    help='Checkpoint step of --workdir (default: the latest saved).',
  )
  parser.add_argument(
    '--top_k',
    type=int,
    default=None,
    help='Classes listed per image (default: min(3, classes)).',
  )
  parser.add_argument(
    '--min_confidence',
    type=float,
    default=0.0,
    help='Rows below this top-1 probability get status "uncertain".',
  )
  parser.add_argument(
    '--batch_size',
    type=int,
    default=predict.DEFAULT_BATCH_SIZE,
    help='Images per forward pass.',
  )
  parser.add_argument(
    '--skip_bad_files',
    action='store_true',
    help='Leave unreadable images out (listed on stderr).',
  )
  parser.add_argument(
    '--csv', default=None, help='Write the CSV here (default: stdout).'
  )
  parser.add_argument(
    '--jsonl', default=None, help='Write one JSON object per image here.'
  )
  parser.add_argument(
    '--overwrite',
    action='store_true',
    help='Replace existing --csv / --jsonl files.',
  )
  return parser.parse_args(argv)


def main(argv=None):
  """The command line; raises ToolError or PredictError on bad input (see run)."""
  args = parse_args(argv)
  # stdout carries only the CSV: anything printed on the way goes to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    out = predict_and_write(args)
  for line in out['stderr']:
    print(line, file=sys.stderr)
  sys.stdout.write(out['stdout'])
  sys.stdout.flush()


def run(argv=None):
  """`layermatch-predict`: main with bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv, errors=(predict.PredictError,))
