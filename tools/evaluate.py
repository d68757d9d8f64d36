"""Runs `layermatch-evaluate` from a checkout: `python tools/evaluate.py ARGS`.

The command is layermatch_jax/commands/evaluate.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import evaluate

if __name__ == '__main__':
  evaluate.run()
