"""Runs `layermatch-learning-benchmark` from a checkout: `python tools/learning_benchmark.py ARGS`.

The command is layermatch_jax/commands/learning_benchmark.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import learning_benchmark

if __name__ == '__main__':
  learning_benchmark.run()
