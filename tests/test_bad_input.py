"""The bad-input catalogue: each case runs the CLI and checks one `error: ...` line,
exit status 2 (or success, where the input is valid), and that every file that
existed before the run is unchanged afterwards."""

import os
import resource
import shutil

import numpy as np
import pytest
from PIL import Image

from tests import cli

FOLDER = (
  '--config.data.name=folder',
  '--config.data.image_size=8',
  '--config.batch_size=4',
  '--config.uratio=1',
  '--config.eval_batch_size=4',
)
SHORT = (
  '--config.num_train_steps=2',
  '--config.checkpoint_every_steps=2',
  '--config.eval_every_steps=2',
  '--config.log_every_steps=1',
)


def make_folder(
  root,
  per_class=3,
  classes=('ant', 'bee'),
  mode='RGB',
  empty=None,
  corrupt=False,
):
  """DIR/train/<class>/*.png and DIR/test/<class>/*.png of random 10x10 images."""
  rng = np.random.default_rng(0)
  channels = {'RGB': (10, 10, 3), 'L': (10, 10)}[mode]
  for sub in ('train', 'test'):
    for name in classes:
      os.makedirs(os.path.join(root, sub, name), exist_ok=True)
      if name == empty and sub == 'train':
        continue
      for i in range(per_class if sub == 'train' else 2):
        pixels = rng.integers(0, 256, channels, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(
          os.path.join(root, sub, name, f'{i}.png')
        )
  if corrupt:
    with open(os.path.join(root, 'train', classes[0], 'broken.png'), 'wb') as f:
      f.write(b'\x89PNG\r\n\x1a\n this is not an image')
  return str(root)


def snapshot(root):
  out = {}
  for parent, _, files in os.walk(root):
    for f in files:
      path = os.path.join(parent, f)
      with open(path, 'rb') as fh:
        out[path] = fh.read()
  return out


def assert_untouched(before):
  """Every file is byte-identical; logs may only have grown (lines appended)."""
  for path, content in before.items():
    assert os.path.exists(path), f'{path} was removed'
    with open(path, 'rb') as f:
      now = f.read()
    if os.path.basename(path) == 'metrics.jsonl' or 'tfevents' in path:
      assert now.startswith(content), f'{path} was rewritten'
    else:
      assert now == content, f'{path} was changed'


def _trained(tmp_path, *extra):
  """A finished 2-step digits run (checkpoint at step 2) to misuse."""
  workdir = tmp_path / 'run'
  proc = cli.run(workdir, *SHORT, *extra)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def _setpriv_without_dac():
  """As root, permission bits bind only without CAP_DAC_OVERRIDE: run under setpriv."""
  if os.geteuid() != 0:
    return ()
  setpriv = shutil.which('setpriv')
  if setpriv is None:
    pytest.skip(
      'running as root without setpriv: a read-only directory cannot be simulated'
    )
  return (setpriv, '--bounding-set=-dac_override,-dac_read_search')


# id -> (setup(tmp_path) -> (workdir, args, run-kwargs), message or None for success)
CASES = {
  'unknown_config_key': (
    lambda t: (t / 'w', ['--config.no_such_key=1'], {}),
    "config has no key 'no_such_key'; valid keys there:",
  ),
  'misspelt_nested_key': (
    lambda t: (t / 'w', ['--config.data.nmae=digits'], {}),
    "config.data has no key 'nmae'",
  ),
  'wrong_type': (
    lambda t: (t / 'w', ['--config.num_train_steps=ten'], {}),
    'num_train_steps=ten',
  ),
  'zero_learning_rate': (
    lambda t: (t / 'w', ['--config.optim.learning_rate=0.0'], {}),
    'config.optim.learning_rate=0.0 is not valid: use a number > 0',
  ),
  'negative_steps': (
    lambda t: (t / 'w', ['--config.num_train_steps=-5'], {}),
    'config.num_train_steps=-5 is not valid: use a positive integer',
  ),
  'zero_batch': (
    lambda t: (t / 'w', ['--config.batch_size=0'], {}),
    'config.batch_size=0 is not valid: use a positive integer',
  ),
  'unknown_algorithm': (
    lambda t: (t / 'w', ['--config.algorithm=mixmatch'], {}),
    "config.algorithm='mixmatch' is not valid: use one of",
  ),
  'labels_not_divisible_by_classes': (
    lambda t: (t / 'w', ['--config.data.num_labels=55'], {}),
    'data.num_labels=55 is not divisible by the 10 classes of digits: use a multiple',
  ),
  'num_labels_neither_a_number_nor_all': (
    lambda t: (t / 'w', ['--config.data.num_labels=some'], {}),
    "config.data.num_labels='some' is not valid: use a positive integer (labeled images, "
    "a multiple of the class count) or 'all'",
  ),
  'val_per_class_not_a_fraction_or_count': (
    lambda t: (t / 'w', ['--config.data.val_per_class=1.5'], {}),
    'config.data.val_per_class=1.5 is not valid: use a fraction in (0, 1)',
  ),
  'more_labels_than_a_class_has': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        f'--config.data.dir={make_folder(t / "img")}',
        '--config.data.num_labels=10',
      ],
      {},
    ),
    'data.num_labels=10 asks for 5 labels per class but class 0 (ant)',
  ),
  'data_dir_missing': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        f'--config.data.dir={t / "nowhere"}',
        '--config.data.num_labels=2',
      ],
      {},
    ),
    'nowhere does not exist or is not a folder; expected DIR/train/<class>/*',
  ),
  'folder_with_an_empty_class': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        f'--config.data.dir={make_folder(t / "img", empty="bee")}',
        '--config.data.num_labels=2',
      ],
      {},
    ),
    'train/bee has no images: every class folder needs at least one file',
  ),
  'corrupt_image': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        f'--config.data.dir={make_folder(t / "img", corrupt=True)}',
        '--config.data.num_labels=2',
      ],
      {},
    ),
    'broken.png',
  ),
  'grayscale_folder_works': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        *SHORT,
        '--config.data.num_labels=2',
        f'--config.data.dir={make_folder(t / "img", mode="L")}',
      ],
      {},
    ),
    None,
  ),
  'tfds_dataset_not_prepared': (
    lambda t: (
      t / 'w',
      [
        '--config.data.name=cifar10',
        '--config.data.image_size=32',
        f'--config.data.dir={t / "tfds"}',
        '--config.data.num_labels=40',
      ],
      {},
    ),
    'prepare it (needs pip install tensorflow-cpu) with: python tools/prepare_data.py',
  ),
  'split_file_of_another_dataset': (
    lambda t: (
      t / 'w',
      [
        *FOLDER,
        f'--config.data.dir={make_folder(t / "img")}',
        '--config.data.num_labels=2',
        f'--config.data.split_file={_digits_split(t)}',
      ],
      {},
    ),
    'was made for dataset digits',
  ),
  'batch_not_divisible_by_devices': (
    lambda t: (t / 'w', ['--config.batch_size=3'], {}),
    'batch_size=3 does not split over 2 device(s)',
  ),
  'workdir_is_a_file': (
    lambda t: (_file(t / 'not_a_dir'), [], {}),
    'is a file: give a directory',
  ),
  'read_only_checkpoint_dir': (
    lambda t: (
      _read_only_checkpoints(t),
      list(SHORT),
      {'prefix': _setpriv_without_dac()},
    ),
    'checkpoints is not writable (Permission denied)',
  ),
  'disk_full_on_checkpoint_write': (
    lambda t: (
      _trained(t),
      [*SHORT[1:], '--config.num_train_steps=4'],
      # Reads the compilation cache, writes none (a cut entry would stay).
      {
        'preexec_fn': _small_file_limit,
        'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': str(10**15),
      },
    ),
    'could not write checkpoint 4',
  ),
  'incompatible_checkpoint': (
    lambda t: (_trained(t), [*SHORT, '--config.model.name=wrn16_1'], {}),
    "was written by an incompatible config (saved vs now: {'model': ('wrn10_1', 'wrn16_1')",
  ),
  'resume_false_on_an_existing_run': (
    lambda t: (_trained(t), [*SHORT, '--config.resume=False'], {}),
    'config.resume=False does not overwrite it',
  ),
  'missing_config_file': (
    lambda t: (
      t / 'w',
      ['--config=configs/no_such_config.py'],
      {'tiny': False},
    ),
    'configs/no_such_config.py',
  ),
  'incomplete_multi_process_flags': (
    lambda t: (t / 'w', ['--num_processes=2'], {}),
    'multi-process runs need all of --coordinator_address, --num_processes and',
  ),
  'vit_init_from_a_missing_file': (
    lambda t: (
      t / 'w',
      [
        '--config.model.name=vit_tiny_test',
        '--config.data.image_size=8',
        f'--config.model.init_from={t / "no_such_weights.npz"}',
      ],
      {},
    ),
    "no_such_weights.npz' is not a file: give a local AugReg/big_vision .npz",
  ),
  'distributed_without_a_cluster': (
    lambda t: (t / 'w', ['--distributed'], {}),
    '--distributed: jax.distributed.initialize() found no cluster to join',
  ),
}


def _file(path):
  path.write_text('keep me')
  return path


def _digits_split(tmp_path):
  from layermatch_jax import data  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config()
  source = data.load_source(config.data)
  path = str(tmp_path / 'digits_split.json')
  data.save_split(path, data.make_split(source, 50, 0))
  return path


def _read_only_checkpoints(tmp_path):
  workdir = tmp_path / 'w'
  os.makedirs(workdir / 'checkpoints')
  os.chmod(workdir / 'checkpoints', 0o555)
  return workdir


def _small_file_limit():
  # Writes past 64 KB fail (EFBIG) as on a full disk; the step-2 checkpoint of
  # the setup run is already written.
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_input(tmp_path, case):
  setup, message = CASES[case]
  workdir, args, kwargs = setup(tmp_path)
  new_workdir = not os.path.exists(workdir)
  before = snapshot(tmp_path)
  proc = cli.run(workdir, *args, **kwargs)
  if message is None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.exists(os.path.join(str(workdir), 'summary.json'))
  else:
    line = cli.error_line(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert line.startswith('error: ') and message in line, line
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    if new_workdir:  # A failed start leaves no empty workdir behind.
      assert not os.path.isdir(workdir) or os.listdir(workdir), workdir
  if case == 'tfds_dataset_not_prepared':
    assert proc.stderr.strip() == line, (
      proc.stderr
    )  # TFDS's own warnings silenced.
    assert not os.path.exists(workdir)
  assert_untouched(before)
  if case == 'disk_full_on_checkpoint_write':
    # The checkpoint written before is whole: a normal rerun resumes from it.
    again = cli.run(workdir, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f'Resuming from {workdir}/checkpoints/2' in again.stdout
  if case == 'read_only_checkpoint_dir':
    assert os.listdir(workdir / 'checkpoints') == []
