"""The repository root on sys.path, for `python tools/NAME.py` from a checkout.

The one place where the tools edit sys.path: it makes the checkout's
layermatch_jax and configs importable whether or not the package is installed.
Installed, each tool is also a command (`layermatch-NAME`, setup.cfg) that needs
none of this; the code is in layermatch_jax/commands/.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
