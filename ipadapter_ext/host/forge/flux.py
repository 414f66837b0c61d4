"""Flux on Forge: XLabs IP-Adapters applied through object patches on a clone of the UNet patcher.

Forge's Flux (``backend/nn/flux.py``, dfdcbab6) drops ``transformer_options`` and has no
attention patch table, and its ``DoubleStreamBlock.forward`` computes the image query inside one
function. So, on a **clone** of the UNet patcher (``add_object_patch`` keys are attribute paths
under the patcher's model):

* ``diffusion_model.double_blocks.N.img_attn.norm.forward`` becomes a tap: it runs the block's own
  QKNorm and keeps the normalised image query (after RMSNorm, before RoPE), returning the same
  tensors, so the block's own attention is unchanged;
* ``diffusion_model.double_blocks.N.forward`` runs the block's own forward (or the patch another
  extension put there), then adds ``Σ w · Attn(q, K_ip, V_ip)`` to the image stream
  (:func:`~..core.attend.flux.add_flux_image_term`), after the block's MLP residual, ungated;
* the unet function wrapper (``set_model_unet_function_wrapper``) is the only place Forge hands
  out the call's rows (``cond_or_uncond``), sigma and latent size; it stores them for the blocks
  of that call, then runs the model (or the wrapper that was there before).

Forge applies object patches when it loads the clone for sampling and restores the originals when
another clone of the same model is loaded, so the next request without a unit runs the original
methods: the clone owns the lifetime and nothing needs removing. Step/start/end, rows, masks and
K/V placement are :class:`~.attn2_patch.ForgeRun`'s, as on SD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.attend.flux import add_flux_image_term
from ..unet import FLUX_LABEL, flux_signature, is_flux
from .attn2_patch import ForgeRun, KVModule

_BLOCK = "diffusion_model.double_blocks.{}"
__all__ = ["FLUX_LABEL", "flux_signature", "is_flux", "patched_clone", "register_flux_patches"]


@dataclass
class _Call:
    """The model call in progress (set by the wrapper), read by every block of that call."""

    extra: dict | None = None


@dataclass
class _Query:
    """The image query one block's QKNorm produced during the current forward."""

    q: torch.Tensor | None = None


class QueryTap:
    """Stands in for ``img_attn.norm.forward``: the original QKNorm, plus a note of its query."""

    def __init__(self, original: Any, slot: _Query) -> None:
        self.original = original
        self.slot = slot

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Any:
        out = self.original(q, k, v)
        self.slot.q = out[0]
        return out


class FluxBlockPatch:
    """Stands in for ``double_blocks.N.forward``: the original block, then the image term."""

    def __init__(self, index: int, original: Any, slot: _Query, call: _Call, run: ForgeRun) -> None:
        self.index = index
        self.original = original
        self.slot = slot
        self.call = call
        self.run = run

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.slot.q = None
        try:
            img, txt = self.original(*args, **kwargs)
            q = self.slot.q
        finally:
            self.slot.q = None  # never keep a step's activations past the block
        extra = self.call.extra
        if q is None or extra is None:  # a call outside Forge's sampler, or a block that did not tap
            return img, txt
        rows, tokens = int(q.shape[0]), int(q.shape[2])
        terms = self.run.terms_for(self.index, rows, tokens, q.device, extra)
        return add_flux_image_term(img, q, terms, self.run.upcast), txt


class FluxUnetWrapper:
    """The unet function wrapper: Forge calls it as ``wrapper(apply_model, {"input", "timestep",
    "c", "cond_or_uncond"})`` for each batch of chunks (``sampling_function.py``)."""

    def __init__(self, call: _Call, previous: Any = None) -> None:
        self.call = call
        self.previous = previous

    def __call__(self, apply_model: Any, args: dict) -> torch.Tensor:
        x = args["input"]
        self.call.extra = {
            "cond_or_uncond": list(args["cond_or_uncond"]),
            "sigmas": args["timestep"],
            "original_shape": list(x.shape),  # the latent: token grid = ceil(h/2) × ceil(w/2)
        }
        try:
            if self.previous is not None:
                return self.previous(apply_model, args)
            return apply_model(x, args["timestep"], **args["c"])
        finally:
            self.call.extra = None

    def to(self, device: Any) -> FluxUnetWrapper:
        """Forge moves a wrapper with the model when it has ``to``; the K/V travel in KVModule."""
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device)
        return self

    def __deepcopy__(self, memo: dict) -> FluxUnetWrapper:
        # UnetPatcher.clone() deep-copies model_options; the call state must stay shared.
        return self


def _unwrapped(obj: Any, kind: type) -> Any:
    """Our own patch from an earlier pass (Forge calls the per-pass hook twice for hires, and the
    previous clone's patches may still be set on the model) is replaced, never chained."""
    while isinstance(obj, kind):
        obj = obj.original if kind is not FluxUnetWrapper else obj.previous
    return obj


def _current(patcher: Any, name: str) -> Any:
    if hasattr(patcher, "get_model_object"):
        return patcher.get_model_object(name)
    obj = patcher.model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def register_flux_patches(patcher: Any, run: ForgeRun) -> None:
    """Object patches on every double block and the unet function wrapper, on ``patcher`` (a clone)."""
    call = _Call()
    for n in range(len(patcher.model.diffusion_model.double_blocks)):
        slot = _Query()
        block = _BLOCK.format(n)
        norm = _unwrapped(_current(patcher, f"{block}.img_attn.norm.forward"), QueryTap)
        forward = _unwrapped(_current(patcher, f"{block}.forward"), FluxBlockPatch)
        patcher.add_object_patch(f"{block}.img_attn.norm.forward", QueryTap(norm, slot))
        patcher.add_object_patch(f"{block}.forward", FluxBlockPatch(n, forward, slot, call, run))
    previous = _unwrapped(patcher.model_options.get("model_function_wrapper"), FluxUnetWrapper)
    patcher.set_model_unet_function_wrapper(FluxUnetWrapper(call, previous))


def patched_clone(patcher: Any, run: ForgeRun) -> Any:
    """A clone of ``patcher`` carrying the units: patches, wrapper and the K/V for Forge's memory
    management. ``patcher`` itself is not changed."""
    clone = patcher.clone()
    register_flux_patches(clone, run)
    run.kv_modules.append(KVModule(run.units))
    clone.add_extra_torch_module_during_sampling(run.kv_modules[-1], cast_to_unet_dtype=False)
    return clone
