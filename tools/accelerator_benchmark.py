"""Runs `layermatch-accelerator-benchmark` from a checkout:
`python tools/accelerator_benchmark.py ARGS`.

The command is layermatch_jax/commands/accelerator_benchmark.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import accelerator_benchmark

if __name__ == '__main__':
  accelerator_benchmark.run()
