"""The Forge 2 family (stable-diffusion-webui-forge with its ``backend/`` package, and forks that
keep it): the image term goes in through attn2 replace patches on a clone of the UNet patcher, and
on Flux through object patches on its blocks. What ``scripts/ipadapter.py`` calls is re-exported."""

from ..common import register_xyz
from ..models import engine
from ..page import build_ui, download_models
from .generation import (
    ForgeState,
    before_sampling,
    on_cfg_denoiser,
    postprocess,
    process,
    register_callbacks,
    register_patches,
)
from .placement import current_placement, forge_placement

FAMILY = "Forge"
FLUX_MISSING = ""  # Flux runs here (flux.py)

__all__ = [
    "FAMILY",
    "FLUX_MISSING",
    "ForgeState",
    "before_sampling",
    "build_ui",
    "current_placement",
    "download_models",
    "engine",
    "forge_placement",
    "on_cfg_denoiser",
    "postprocess",
    "process",
    "register_callbacks",
    "register_patches",
    "register_xyz",
]
