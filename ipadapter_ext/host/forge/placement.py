"""Where Forge runs the UNet, for the encoders and K/V to follow."""

from __future__ import annotations

from typing import Any

import torch

from ...core.engine import Placement
from ..settings import opt


def forge_placement(patcher: Any, dtype: torch.dtype | None = None) -> Placement:
    """Forge keeps the UNet offloaded between generations and loads it to ``load_device`` when
    sampling starts, so K/V go there, in the dtype the UNet computes in (``dtype``, as the family's
    ``readers.dtype`` read it; else Forge 2's ``computation_dtype``, else the UNet's own). The
    encoder always leaves the GPU after encoding: Forge's memory manager does not know about it."""
    unet = patcher.model.diffusion_model
    device = torch.device(patcher.load_device)
    dtype = dtype or getattr(patcher.model, "computation_dtype", None) or getattr(unet, "dtype", torch.float32)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return Placement(
        device=device,
        dtype=dtype,
        encoder_dtype=dtype if device.type != "cpu" else torch.float32,
        offload_encoder=device.type != "cpu",
        upcast_attention=bool(opt("upcast_attn", False)),
    )


def current_placement() -> Placement:
    """Encode where the loaded UNet will run (CPU when none is loaded): for the HTTP routes."""
    from modules import shared

    try:
        return forge_placement(shared.sd_model.forge_objects.unet)
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)
