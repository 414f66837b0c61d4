"""Where A1111 runs the UNet, for the encoders and K/V to follow."""

from __future__ import annotations

from typing import Any

import torch

from ...core.engine import Placement
from ..settings import opt
from ..unet import diffusion_model


def unet_device(sd_model: Any, unet: torch.nn.Module) -> torch.device:
    """The device the UNet computes on. With --medvram/--lowvram/--medvram-sdxl A1111
    (``modules/lowvram.py``) keeps the UNet, or each of its blocks, on the CPU and moves it to
    ``devices.device`` in a forward pre-hook, so between passes its weights are on the CPU while it
    will run on the GPU. Otherwise the model was moved to ``devices.device`` whole; its weights say
    where (an extension may have placed it elsewhere)."""
    from modules import devices

    if getattr(sd_model, "lowvram", False):
        return torch.device(devices.device)
    return next(unet.parameters()).device


def lowvram_flags(sd_model: Any) -> bool:
    """--medvram, --lowvram, or --medvram-sdxl with an SDXL model (``lowvram.is_needed``)."""
    from modules import shared

    cmd = shared.cmd_opts
    return bool(
        getattr(cmd, "medvram", False)
        or getattr(cmd, "lowvram", False)
        or (getattr(cmd, "medvram_sdxl", False) and getattr(sd_model, "is_sdxl", False))
    )


def placement(sd_model: Any, unet: torch.nn.Module) -> Placement:
    from modules import devices

    param = next(unet.parameters())
    dtype = param.dtype if param.dtype in (torch.float16, torch.bfloat16, torch.float32) else devices.dtype
    device = unet_device(sd_model, unet)
    return Placement(
        device=device,
        dtype=dtype,
        encoder_dtype=dtype if device.type != "cpu" else torch.float32,
        offload_encoder=lowvram_flags(sd_model) or bool(opt("ipadapter_offload_encoder", True)),
        upcast_attention=bool(opt("upcast_attn", False)),
    )


def current_placement() -> Placement:
    """Encode on the loaded UNet's device (CPU when none is loaded): for the HTTP routes."""
    from modules import shared

    try:
        return placement(shared.sd_model, diffusion_model(shared.sd_model))
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)
