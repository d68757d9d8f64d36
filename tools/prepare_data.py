"""Runs `layermatch-prepare-data` from a checkout: `python tools/prepare_data.py ARGS`.

The command is layermatch_jax/commands/prepare_data.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import prepare_data

if __name__ == '__main__':
  prepare_data.run()
