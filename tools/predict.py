"""Runs `layermatch-predict` from a checkout: `python tools/predict.py ARGS`.

The command is layermatch_jax/commands/predict.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import predict

if __name__ == '__main__':
  predict.run()
