"""Runs `layermatch-probe` from a checkout: `python tools/probe.py ARGS`.

The command is layermatch_jax/commands/probe.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import probe

if __name__ == '__main__':
  probe.run()
