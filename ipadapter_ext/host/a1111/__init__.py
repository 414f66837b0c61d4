"""The AUTOMATIC1111 family (1.10.x: ``modules`` + ``ldm``/``sgm``): the image term goes in through
torch hooks on the UNet's attn2 modules. What ``scripts/ipadapter.py`` calls is re-exported here."""

from ...core.engine import Placement
from ..common import register_xyz
from ..models import _EngineHolder, engine, loaded_signature
from ..page import build_ui, download_models
from ..unet import unet_layout
from .generation import (
    GenerationState,
    before_sampling,
    on_cfg_denoiser,
    postprocess,
    process,
    register_callbacks,
    sweep,
)
from .placement import current_placement, placement

FAMILY = "AUTOMATIC1111"
FLUX_MISSING = "it needs Forge with a Flux checkpoint (A1111 has no Flux)."

__all__ = [
    "FAMILY",
    "FLUX_MISSING",
    "GenerationState",
    "Placement",
    "_EngineHolder",
    "before_sampling",
    "build_ui",
    "current_placement",
    "download_models",
    "engine",
    "loaded_signature",
    "on_cfg_denoiser",
    "placement",
    "postprocess",
    "process",
    "register_callbacks",
    "register_xyz",
    "sweep",
    "unet_layout",
]
