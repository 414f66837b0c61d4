"""Process-wide model state (registry and caches) and what the loaded checkpoint looks like."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.attend.layers import Attn2Slot, map_ldm_attn2
from ..core.encode.faces import FaceReferences
from ..core.engine import Engine, Placement
from ..core.load.compat import UNetSignature
from ..core.load.registry import ModelRegistry
from ..interop.controlnet import extra_model_dirs, face_roots
from .settings import opt


class _EngineHolder:
    """The process-wide caches (models, embeddings); created on first use, never at import."""

    engine: Engine | None = None

    @classmethod
    def get(cls) -> Engine:
        if cls.engine is None:
            from modules.paths_internal import models_path

            root = Path(models_path)
            adapters = root / "ipadapter"
            adapters.mkdir(parents=True, exist_ok=True)
            extra = [Path(p.strip()) for p in str(opt("ipadapter_extra_folders", "")).split(",") if p.strip()]
            cn_models, cn_encoders = extra_model_dirs()  # folders sd-webui-controlnet keeps
            registry = ModelRegistry(
                [adapters, *extra], [root / "clip_vision", *extra, *cn_encoders], [root / "ControlNet", *cn_models]
            )
            faces = FaceReferences(lambda: face_pack_roots(root), lambda: str(opt("ipadapter_face_pack", "buffalo_l")))
            cls.engine = Engine(registry, embedding_cache_size=int(opt("ipadapter_cache_size", 32)), faces=faces)
        return cls.engine

    @classmethod
    def reset(cls) -> None:
        cls.engine = None


def engine() -> Engine:
    return _EngineHolder.get()


def face_pack_roots(models: Path) -> list[Path]:
    """Where face analysis packs are looked for: ``models/insightface/models/<pack>`` (the convention
    of other extensions), Forge's preprocessor folder, then ControlNet's downloads."""
    return [models, models / "ControlNetPreprocessor", *face_roots()]


# -- UNet -------------------------------------------------------------------------------------
def diffusion_model(sd_model: Any) -> torch.nn.Module:
    """The UNet module: ``sd_model.model.diffusion_model`` on A1111; on Forge the one inside the
    UNet patcher (Forge's model object has no ``.model``)."""
    forge_objects = getattr(sd_model, "forge_objects", None)
    if forge_objects is not None:
        return forge_objects.unet.model.diffusion_model
    return sd_model.model.diffusion_model


def attn2_slots(unet: torch.nn.Module) -> tuple[list[Attn2Slot], dict[str, torch.nn.Module]]:
    """The UNet's attn2 slots in adapter key order, and its attn2 modules by name. Forge's UNet
    (``backend/nn/unet.py``) keeps the LDM module names, so one mapping serves both hosts."""
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


def model_signature(sd_model: Any) -> UNetSignature:
    """The loaded model's signature for the checks: Flux's double blocks on Forge, else the UNet's
    cross-attention layers."""
    from .forge_flux import flux_signature, is_flux

    unet = diffusion_model(sd_model)
    return flux_signature(unet) if is_flux(unet) else unet_layout(sd_model)[2]


def placement(sd_model: Any, unet: torch.nn.Module) -> Placement:
    from modules import devices, shared

    forge_objects = getattr(sd_model, "forge_objects", None)
    if forge_objects is not None:
        return forge_placement(forge_objects.unet)
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


def forge_placement(patcher: Any) -> Placement:
    """Forge keeps the UNet offloaded between generations and loads it to ``load_device`` when
    sampling starts, so K/V go there, in the dtype the UNet computes in. The encoder always
    leaves the GPU after encoding: Forge's memory manager does not know about it."""
    unet = patcher.model.diffusion_model
    device = torch.device(patcher.load_device)
    dtype = getattr(patcher.model, "computation_dtype", None) or getattr(unet, "dtype", torch.float32)
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return Placement(
        device=device,
        dtype=dtype,
        encoder_dtype=dtype if device.type != "cpu" else torch.float32,
        offload_encoder=device.type != "cpu",
        upcast_attention=bool(opt("upcast_attn", False)),
    )


def loaded_signature() -> UNetSignature | None:
    """The loaded checkpoint's UNet signature, or ``None`` when no model is loaded."""
    from modules import shared

    try:
        return model_signature(shared.sd_model)
    except Exception:  # no model loaded (yet), or one that is not an LDM UNet
        return None


def _current_placement() -> Placement:
    """Encode on the loaded UNet's device (CPU when none is loaded)."""
    from modules import shared

    try:
        return placement(shared.sd_model, diffusion_model(shared.sd_model))
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)


def model_hash(name: str) -> str | None:
    """The WebUI's cached sha256 of an adapter file, shortened like checkpoint hashes."""
    try:
        entry = engine().registry.adapter(name)
        from modules import hashes

        digest = hashes.sha256(str(entry.path), f"ipadapter/{entry.name}")
    except Exception:  # unknown model (reported at sampling) or no hash available
        return None
    return digest[:10] if digest else None
