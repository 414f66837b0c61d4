"""Host glue. ``select()`` picks the package for the WebUI family this runs in, so that
``scripts/ipadapter.py`` is one file for every host.

One sub-package per host family (``a1111/``, ``forge/``), with what they share beside them
(``common``, ``models``, ``unet``, ``page``, ``settings``, the img2img inputs). Each family package
exposes ``FAMILY``, ``build_ui``, ``process``, ``before_sampling``, ``postprocess`` and
``register_callbacks``.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType


def is_forge() -> bool:
    """stable-diffusion-webui-forge ships the ``modules_forge`` package beside ``modules``; A1111
    has no such package. Looked up, not imported: nothing of Forge runs by asking."""
    return importlib.util.find_spec("modules_forge") is not None


def select() -> ModuleType:
    """``host.forge`` on Forge, ``host.a1111`` otherwise."""
    if is_forge():
        from . import forge

        return forge
    from . import a1111

    return a1111
