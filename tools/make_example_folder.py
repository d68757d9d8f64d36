"""Runs `layermatch-make-example-folder` from a checkout:
`python tools/make_example_folder.py ARGS`.

The command is layermatch_jax/commands/make_example_folder.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import make_example_folder

if __name__ == '__main__':
  make_example_folder.run()
