"""Host glue. ``select()`` picks the module for the WebUI this runs in, so that
``scripts/ipadapter.py`` is one file for both hosts."""

from __future__ import annotations

import importlib.util
from types import ModuleType


def is_forge() -> bool:
    """stable-diffusion-webui-forge ships the ``modules_forge`` package beside ``modules``; A1111
    has no such package. Looked up, not imported: nothing of Forge runs by asking."""
    return importlib.util.find_spec("modules_forge") is not None


def select() -> ModuleType:
    """``host.forge`` on Forge, ``host.a1111`` otherwise; both expose ``build_ui``, ``process``,
    ``before_sampling``, ``postprocess`` and ``register_callbacks``."""
    if is_forge():
        from . import forge

        return forge
    from . import a1111

    return a1111
