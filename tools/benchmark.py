"""Runs `layermatch-benchmark` from a checkout: `python tools/benchmark.py ARGS`.

The command is layermatch_jax/commands/benchmark.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import benchmark

if __name__ == '__main__':
  benchmark.run()
