"""Where Forge 1 runs the UNet: as on Forge 2 (``load_device`` of the UNet patcher), in the dtype
``readers.forge1_dtype`` reads."""

from __future__ import annotations

from typing import Any

import torch

from ...core.engine import Placement
from ..forge.placement import forge_placement
from .readers import forge1_dtype


def forge1_placement(patcher: Any) -> Placement:
    return forge_placement(patcher, forge1_dtype(patcher))


def current_placement() -> Placement:
    """Encode where the loaded UNet will run (CPU when none is loaded): for the HTTP routes."""
    from modules import shared

    try:
        return forge1_placement(shared.sd_model.forge_objects.unet)
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)
