"""The Forge 1 family (reForge main, Forge Classic: ``modules_forge/unet_patcher.py`` over
``ldm_patched/``): attn2 replace patches on a clone of the UNet patcher, as on Forge 2, with the
kernel, sigma schedule and dtype read from ``ldm_patched``'s model objects (``readers.py``). No
Flux: a Flux adapter is refused in words. What ``scripts/ipadapter.py`` calls is re-exported."""

from ..common import register_xyz
from ..models import engine
from ..page import build_ui, download_models
from .generation import Forge1State, before_sampling, on_cfg_denoiser, postprocess, process, register_callbacks
from .placement import current_placement, forge1_placement
from .readers import FORGE1, NO_FLUX

FAMILY = "Forge 1"
FLUX_MISSING = NO_FLUX

__all__ = [
    "FAMILY",
    "FLUX_MISSING",
    "FORGE1",
    "Forge1State",
    "before_sampling",
    "build_ui",
    "current_placement",
    "download_models",
    "engine",
    "forge1_placement",
    "on_cfg_denoiser",
    "postprocess",
    "process",
    "register_callbacks",
    "register_xyz",
]
