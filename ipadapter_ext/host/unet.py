"""What the loaded model looks like to the checks: the UNet module, its attn2 layers in adapter key
order, and its signature (or Flux's). Read the same way on every host family: A1111 keeps the UNet at
``sd_model.model.diffusion_model``; the Forge families keep it inside the UNet patcher, with the LDM
module names, so one mapping serves all of them."""

from __future__ import annotations

from typing import Any

import torch

from ..core.attend.layers import Attn2Slot, map_ldm_attn2
from ..core.load.compat import UNetSignature

FLUX_LABEL = "Flux"


def diffusion_model(sd_model: Any) -> torch.nn.Module:
    """The UNet module: ``sd_model.model.diffusion_model`` on A1111; on Forge the one inside the
    UNet patcher (Forge's model object has no ``.model``)."""
    forge_objects = getattr(sd_model, "forge_objects", None)
    if forge_objects is not None:
        return forge_objects.unet.model.diffusion_model
    return sd_model.model.diffusion_model


def attn2_slots(unet: torch.nn.Module) -> tuple[list[Attn2Slot], dict[str, torch.nn.Module]]:
    """The UNet's attn2 slots in adapter key order, and its attn2 modules by name."""
    found = {name: m for name, m in unet.named_modules() if name.endswith("attn2")}
    return map_ldm_attn2(found), found


def unet_layout(sd_model: Any) -> tuple[torch.nn.Module, list[torch.nn.Module], UNetSignature]:
    """The UNet, its attn2 modules in adapter key order, and its signature for the checks."""
    unet = diffusion_model(sd_model)
    slots, found = attn2_slots(unet)
    modules = [found[s.name] for s in slots]
    label = (
        "SDXL" if getattr(sd_model, "is_sdxl", False) else "SD2.x" if getattr(sd_model, "is_sd2", False) else "SD1.5"
    )
    context = modules[0].to_k.in_features if modules else 0
    return unet, modules, UNetSignature.from_slots(context, [m.to_k.out_features for m in modules], slots, label)


def is_flux(diffusion_model: Any) -> bool:
    """Forge's ``IntegratedFluxTransformer2DModel`` (or anything shaped like it): double- and
    single-stream blocks and a text input projection. Forge sets no ``is_flux`` flag."""
    return all(hasattr(diffusion_model, a) for a in ("double_blocks", "single_blocks", "txt_in"))


def flux_signature(diffusion_model: Any) -> UNetSignature:
    """What the checks compare an adapter with: text width, the hidden width per double block, the
    single blocks and the heads' width."""
    blocks = len(diffusion_model.double_blocks)
    hidden = int(diffusion_model.hidden_size)
    return UNetSignature(
        int(diffusion_model.txt_in.in_features),
        (hidden,) * blocks,
        FLUX_LABEL,
        arch="flux",
        single_blocks=len(diffusion_model.single_blocks),
        head_dim=hidden // int(diffusion_model.num_heads),
    )


def model_signature(sd_model: Any) -> UNetSignature:
    """The loaded model's signature for the checks: Flux's double blocks on Forge, else the UNet's
    cross-attention layers."""
    unet = diffusion_model(sd_model)
    return flux_signature(unet) if is_flux(unet) else unet_layout(sd_model)[2]
