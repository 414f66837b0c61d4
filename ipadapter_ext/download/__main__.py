"""``python -m ipadapter_ext.download``: the command line of :mod:`.cli`."""

import sys

from .cli import run

sys.exit(run())
