"""Puts the test doubles of the WebUI's ``modules`` package on ``sys.path``.

Nothing in the real environment provides ``modules``; the core's import-boundary test runs in a
subprocess that blocks the name, so it is unaffected.
"""

import sys
from pathlib import Path

DOUBLES = str(Path(__file__).parent / "doubles")
if DOUBLES not in sys.path:
    sys.path.insert(0, DOUBLES)
