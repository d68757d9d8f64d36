"""Runs `layermatch-plot` from a checkout: `python tools/plot.py ARGS`.

The command is layermatch_jax/commands/plot.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import plot

if __name__ == '__main__':
  plot.run()
