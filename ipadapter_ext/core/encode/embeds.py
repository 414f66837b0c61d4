"""Precomputed image prompts: a unit's cond/uncond tokens as a portable safetensors blob.

``/ipadapter/v1/encode`` returns them, and a unit's ``embeds`` field takes them back instead of
images, so an API client can encode a reference once and reuse it without sending the image or
running the encoder again. The blob names the model it was made for; tokens only make sense for
that projection, so using them with another model is refused in words.
"""

from __future__ import annotations

import base64
import binascii
import json

import torch
from safetensors.torch import load, save

from ..errors import IPAdapterError

FORMAT = "ipadapter-embeds/1"


def pack_embeds(cond: torch.Tensor, uncond: torch.Tensor, model: str) -> str:
    """[1, T, ctx] cond and uncond tokens → base64 safetensors."""
    tensors = {"cond": cond.detach().float().cpu().contiguous(), "uncond": uncond.detach().float().cpu().contiguous()}
    return base64.b64encode(save(tensors, metadata={"format": FORMAT, "model": model})).decode()


def unpack_embeds(text: str, where: str = "embeds") -> tuple[torch.Tensor, torch.Tensor, str]:
    """base64 safetensors → (cond, uncond, model name), validated."""
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)  # line-wrapped base64 too
    except (binascii.Error, ValueError) as exc:
        raise IPAdapterError(f"{where}: not valid base64 ({exc}).") from exc
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8 : 8 + header_len]).get("__metadata__", {})
    except Exception as exc:
        raise IPAdapterError(
            f"{where}: not a safetensors blob from /ipadapter/v1/encode ({type(exc).__name__})."
        ) from exc
    cond, uncond = tensors.get("cond"), tensors.get("uncond")
    if metadata.get("format") != FORMAT or cond is None or uncond is None:
        raise IPAdapterError(f"{where}: not IP-Adapter embeds (expected format {FORMAT} with cond and uncond tensors).")
    if cond.ndim != 3 or cond.shape != uncond.shape or cond.shape[0] != 1:
        raise IPAdapterError(
            f"{where}: cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} must both be [1, T, C]."
        )
    if not cond.is_floating_point() or not uncond.is_floating_point():
        raise IPAdapterError(
            f"{where}: cond and uncond must be floating-point tensors, not {cond.dtype}/{uncond.dtype}."
        )
    for name, tensor in (("cond", cond), ("uncond", uncond)):
        if not bool(torch.isfinite(tensor).all()):
            raise IPAdapterError(
                f"{where}: the {name} tokens contain NaN or infinite values, which would turn the image into "
                "NaN. Encode the image again with /ipadapter/v1/encode."
            )
    return cond, uncond, str(metadata.get("model", ""))
