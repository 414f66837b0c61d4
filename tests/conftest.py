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


@pytest.fixture
def controlnet(tmp_path, monkeypatch):
    """sd-webui-controlnet's double with the tiny face packs (tests/face_hosts.py)."""
    from tests.face_hosts import controlnet_double

    yield from controlnet_double(tmp_path, monkeypatch)


@pytest.fixture
def forge(tmp_path, monkeypatch):
    """Forge's registry and built-in insightface users, doubled (tests/face_hosts.py)."""
    from tests.face_hosts import forge_double

    yield from forge_double(tmp_path, monkeypatch)


@pytest.fixture
def service(webui, monkeypatch):
    """Our script loaded (``webui``) with a fresh face-preprocessor serving state."""
    from tests.face_hosts import fresh_service

    return fresh_service(monkeypatch)
