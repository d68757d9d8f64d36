"""Prepares a TFDS dataset in array_record format, the format training reads.

  layermatch-prepare-data --dataset=cifar10 --data_dir=DIR   # or: python tools/prepare_data.py ...
  layermatch-prepare-data --dataset=imagenet100 --data_dir=DIR \
      --manual_dir=DIR_WITH_ILSVRC2012_TARS

Needs TensorFlow (an optional extra: `pip install tensorflow-cpu`) and, except
for ImageNet, internet access. ImageNet cannot be downloaded: put
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --manual_dir.
`imagenet100` prepares imagenet2012 (if needed) and then writes the index of
the 100 CMC classes to DIR/imagenet100/index.npz (that step alone needs no
TensorFlow). Training then reads DIR with --config.data.dir=DIR.

Exit status 2 and one `error: ...` line on stderr for bad input.
"""

from layermatch_jax import cli_util

DATASETS = ('cifar10', 'cifar100', 'stl10', 'imagenet2012', 'imagenet100')


def main(argv=None):
  """The command line; raises ToolError on bad input (see run)."""
  parser = cli_util.argument_parser(__doc__)
  parser.add_argument('--dataset', required=True, choices=DATASETS)
  parser.add_argument(
    '--data_dir', required=True, help='TFDS data dir (config data.dir)'
  )
  parser.add_argument(
    '--manual_dir',
    default=None,
    help='folder with manually downloaded files (ImageNet tars)',
  )
  args = parser.parse_args(argv)

  from layermatch_jax.data import sources  # pylint: disable=import-outside-toplevel
  from layermatch_jax.data import tfds_sources  # pylint: disable=import-outside-toplevel

  if args.dataset == 'imagenet2012' and not args.manual_dir:
    raise cli_util.ToolError(
      '--dataset=imagenet2012 needs --manual_dir=DIR holding '
      'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'
    )
  try:
    tfds_sources.prepare(args.dataset, args.data_dir, args.manual_dir)
  except sources.DataError as e:
    raise cli_util.ToolError(str(e)) from e
  print(
    f'{args.dataset} is ready in {args.data_dir}: train with '
    f'--config.data.dir={args.data_dir}'
  )


def run(argv=None):
  """`layermatch-prepare-data`: bad input as one `error:` line, exit status 2."""
  cli_util.run(main, argv)
