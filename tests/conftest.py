"""Puts the test doubles of the WebUI's ``modules`` package on ``sys.path``.

Nothing in the real environment provides ``modules``; the core's import-boundary test runs in a
subprocess that blocks the name, so it is unaffected.
"""

import sys
from pathlib import Path

import pytest

DOUBLES = str(Path(__file__).parent / "doubles")
if DOUBLES not in sys.path:
    sys.path.insert(0, DOUBLES)


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """The A1111 environment (tests/a1111_env.py), imported only by the tests that use it."""
    from tests.a1111_env import make_webui

    yield from make_webui(tmp_path, monkeypatch)
