"""What the command-line tools share: the one-line error contract, whole-file
writes, and the checkout's configs.

  def main(argv=None):
    args = cli_util.argument_parser(__doc__).parse_args(argv)   # usage errors: ToolError
    ...
    raise cli_util.ToolError('--step=7 has no checkpoint ...')

  def run(argv=None):            # the console entry point (setup.cfg)
    cli_util.run(main, argv)     # ToolError -> `error: ...` on stderr, exit status 2

  cli_util.write_text(path, text); cli_util.write_json(path, obj)
  with cli_util.atomic_write(path, 'wb') as f: ...

A write goes to a temporary file in the same directory, is fsynced and renamed
over PATH (os.replace): readers see the old file or the new one, never a part,
and a failure leaves PATH as it was.

This module imports only the standard library: bundle.py, which must run
without flax or the model code, uses it too.
"""

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import signal
import sys
from typing import Callable, NoReturn, Optional, Sequence, Tuple, Type

# The directory holding the layermatch_jax package: the repository in a checkout
# and in an editable install (`pip install -e .`, what `make install` does).
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ToolError(ValueError):
  """Bad input to a tool; the message is the one `error:` line."""


def one_line(text) -> str:
  """`text` (an error's message) on one line."""
  return ' '.join(str(text).split())


def fail(message) -> NoReturn:
  """The one-line error contract of layermatch_jax.main: stderr, exit status 2."""
  print(f'error: {one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(2)


def run(
  main: Callable,
  argv: Optional[Sequence[str]] = None,
  errors: Tuple[Type[Exception], ...] = (),
):
  """Runs `main(argv)` as a command: ToolError (and `errors`) become one line
  `error: ...` on stderr and exit status 2; returns what main returns.

  `argv=None` is a real command line (main parses sys.argv[1:]): then a closed
  pipe ends the process quietly (`tool ... | head`), as a shell tool should.
  """
  if argv is None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
  try:
    return main(argv)
  except (ToolError, *errors) as e:
    fail(e)


class _ArgumentParser(argparse.ArgumentParser):
  def error(self, message):
    # argparse's own errors are a usage block; the contract is one line.
    raise ToolError(message)


def argument_parser(doc: str, **kwargs) -> argparse.ArgumentParser:
  """A parser described by `doc`'s first line; a usage error raises ToolError."""
  return _ArgumentParser(description=doc.strip().splitlines()[0], **kwargs)


# --------------------------------------------------------------------------
# Files.


@contextlib.contextmanager
def atomic_write(path: str, mode: str = 'w', **open_kwargs):
  """A new file object (mode 'w' or 'wb') that replaces `path` whole when the
  block ends; if the block raises, `path` is left as it was."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'mode={mode!r}: use w or wb')
  directory, name = os.path.split(os.path.abspath(path))
  # Hidden, and unique to this process and call: two writers never share one.
  tmp = os.path.join(
    directory, f'.{name}.tmp-{os.getpid()}-{os.urandom(4).hex()}'
  )
  try:
    with open(tmp, mode.replace('w', 'x'), **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str):
  """Writes `text` to `path` atomically, exactly as given (no newline translation)."""
  with atomic_write(path, 'w', newline='') as f:
    f.write(text)


def write_json(
  path: str, obj, indent: Optional[int] = None, sort_keys: bool = False
):
  """Writes `obj` as JSON and a newline to `path` atomically."""
  write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + '\n')


def read_json(path: str, error: Type[Exception] = ToolError, missing: str = ''):
  """The JSON value in `path`. Raises `error` with a one-line message naming
  `path` when it does not exist (`missing`: what to do instead) or is not
  readable JSON; the caller checks the value's structure."""
  if not os.path.isfile(path):
    raise error(f'{path} does not exist' + (f': {missing}' if missing else ''))
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise error(f'{path} is not readable: {one_line(e)}') from e


# --------------------------------------------------------------------------
# The checkout's configs.


def import_configs():
  """The repository's `configs` package, made importable where it is not.

  `configs/` is not installed with layermatch_jax, and an installed command
  (`layermatch-evaluate`, ...) does not run from the repository root: the
  package is then loaded from the checkout this package lives in, so that
  `from configs import default` (in code and in config files) works. Only
  `configs` becomes importable; sys.path is not changed.
  """
  try:
    return importlib.import_module('configs')
  except ModuleNotFoundError as e:
    if e.name != 'configs':
      raise
  init = os.path.join(CHECKOUT, 'configs', '__init__.py')
  if not os.path.isfile(init):
    raise ToolError(
      f'{os.path.dirname(init)} does not exist: layermatch_jax reads its configs '
      'from a checkout of the repository (install one with pip install -e .)'
    )
  spec = importlib.util.spec_from_file_location(
    'configs', init, submodule_search_locations=[os.path.dirname(init)]
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules['configs'] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules['configs']
    raise
  return module


def load_config_file(path: str, *args):
  """`get_config(*args)` of a config file (configs/NAME.py), as main's --config reads it."""
  import_configs()  # Config files start from `from configs import default`.
  if not os.path.isfile(path):
    raise ToolError(f'config file {path} does not exist')
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(
    f'_layermatch_config_{name}', path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ToolError(f'config file {path} has no get_config()')
  return module.get_config(*args)
