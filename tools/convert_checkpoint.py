"""Runs `layermatch-convert-checkpoint` from a checkout: `python tools/convert_checkpoint.py ARGS`.

The command is layermatch_jax/commands/convert_checkpoint.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import convert_checkpoint

if __name__ == '__main__':
  convert_checkpoint.run()
