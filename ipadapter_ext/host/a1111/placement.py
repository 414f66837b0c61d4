"""Where A1111 runs the UNet, for the encoders and K/V to follow."""

from __future__ import annotations

from typing import Any

import torch

from ...core.engine import Placement
from ..settings import opt
from ..unet import diffusion_model


def placement(sd_model: Any, unet: torch.nn.Module) -> Placement:
    from modules import devices, shared

    param = next(unet.parameters())
    dtype = param.dtype if param.dtype in (torch.float16, torch.bfloat16, torch.float32) else devices.dtype
    cmd = shared.cmd_opts
    lowmem = bool(
        getattr(cmd, "medvram", False)
        or getattr(cmd, "lowvram", False)
        or (getattr(cmd, "medvram_sdxl", False) and getattr(sd_model, "is_sdxl", False))
    )
    return Placement(
        device=param.device,
        dtype=dtype,
        encoder_dtype=dtype if param.device.type != "cpu" else torch.float32,
        offload_encoder=lowmem or bool(opt("ipadapter_offload_encoder", False)),
        upcast_attention=bool(opt("upcast_attn", False)),
    )


def current_placement() -> Placement:
    """Encode on the loaded UNet's device (CPU when none is loaded): for the HTTP routes."""
    from modules import shared

    try:
        return placement(shared.sd_model, diffusion_model(shared.sd_model))
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)
