"""Host glue. ``select()`` picks the package for the WebUI family this runs in (``detect.py`` tells
it by the modules the host provides), so that ``scripts/ipadapter.py`` is one file for every host.

One sub-package per host family (``a1111/``; ``forge/`` = Forge 2 with its ``backend/``;
``forge1/`` = reForge and Forge Classic over ``ldm_patched/``), with what they share beside them
(``common``, ``models``, ``unet``, ``page``, ``settings``, the img2img inputs). Each family package
exposes ``FAMILY``, ``HAS_FLUX``, ``build_ui``, ``process``, ``before_sampling``, ``postprocess`` and
``register_callbacks``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .detect import detect


def is_forge() -> bool:
    """A Forge family (2 or 1): the image term goes in through the UNet patcher, not torch hooks."""
    return detect().key != "a1111"


def family_key() -> str:
    """``"a1111"``, ``"forge"`` (Forge 2) or ``"forge1"`` (Forge 1)."""
    return detect().key


def select() -> ModuleType:
    """``host.forge`` on Forge 2, ``host.forge1`` on Forge 1, ``host.a1111`` otherwise."""
    return importlib.import_module(f"{__name__}.{detect().key}")


def startup_line() -> str:
    """What the console says once, when the script loads: the family found and why."""
    return detect().startup_line()
