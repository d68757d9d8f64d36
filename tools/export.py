"""Runs `layermatch-export` from a checkout: `python tools/export.py ARGS`.

The command is layermatch_jax/commands/export.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import export

if __name__ == '__main__':
  export.run()
