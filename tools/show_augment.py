"""Runs `layermatch-show-augment` from a checkout: `python tools/show_augment.py ARGS`.

The command is layermatch_jax/commands/show_augment.py, which documents it.
"""

import _path  # noqa: F401  # pylint: disable=unused-import  # The checkout importable.

from layermatch_jax.commands import show_augment

if __name__ == '__main__':
  show_augment.run()
