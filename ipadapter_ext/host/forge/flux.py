"""Flux on Forge: XLabs and InstantX IP-Adapters through object patches on a clone of the UNet
patcher, and Redux through the context (``flux_context.py``).

Forge's Flux (``backend/nn/flux.py``, dfdcbab6) drops ``transformer_options`` and has no
attention patch table; each block computes its queries inside one function. So, on a **clone**
of the UNet patcher (``add_object_patch`` keys are attribute paths under the patcher's model):

* ``…double_blocks.N.img_attn.norm.forward`` and (InstantX) ``…single_blocks.M.norm.forward``
  become taps: each runs the block's own QK norm and keeps the normalised query (before RoPE),
  returning the same tensors, so the block's own attention is unchanged;
* XLabs: ``…double_blocks.N.forward`` runs the block, then adds ``Σ w · Attn(q, K_ip, V_ip)`` to
  the image stream, after the block's MLP residual, ungated;
* InstantX: ``…double_blocks.N.img_attn.proj.forward`` and ``…single_blocks.M.linear2.forward``
  add the term to their input (the block's attention output) before the projection runs;
* the unet function wrapper (``set_model_unet_function_wrapper``) is the only place Forge hands
  out the call's rows (``cond_or_uncond``), sigma and latent size; it stores them for the blocks
  of that call, appends Redux tokens to the context, then runs the model (or the wrapper that was
  there before).

Every patch chains onto what the clone's own patch list holds, never onto what an earlier clone
left on the model, and is inert once its generation has ended (``object_patches.py``): another
script's patches on the same attributes work in either order. Forge applies object patches when
it loads the clone for sampling and restores the originals when another clone of the same model
is loaded, so the next request without a unit runs the original methods: the clone owns the
lifetime. ersatzForge runs a clone of the loaded model without applying its object patches; there
the wrapper puts the sampled clone's patches on for each model call and takes them off after it.
Step/start/end, rows, masks and K/V placement are :class:`~.attn2_patch.ForgeRun`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.attend.flux import add_flux_image_term, add_to_attention, single_stream_terms
from ..unet import FLUX_LABEL, flux_signature, is_flux
from .attn2_patch import ForgeRun, KVModule
from .flux_context import ContextUnits, image_tokens
from .object_patches import ChainedPatch, chain_target, install_missing, put_back, unpatched

_DOUBLE = "diffusion_model.double_blocks.{}"
_SINGLE = "diffusion_model.single_blocks.{}"
__all__ = ["FLUX_LABEL", "FluxRun", "flux_signature", "is_flux", "patched_clone", "register_flux_patches"]


@dataclass
class _Call:
    """The model call in progress (set by the wrapper), read by every block of that call."""

    extra: dict | None = None


@dataclass
class _Query:
    """The query one block's QK norm produced during the current forward."""

    q: torch.Tensor | None = None
    #: Read by both an InstantX projection tap and an XLabs block patch: the block patch clears it.
    shared: bool = False


@dataclass
class FluxRun:
    """One sampling pass on Flux: the units by how they attach, and the call in progress."""

    xlabs: ForgeRun | None = None
    instantx: ForgeRun | None = None
    context: ContextUnits | None = None
    double: int = 0  # double blocks: InstantX numbers its single blocks after them
    call: _Call = field(default_factory=_Call)
    closed: bool = False
    #: attribute paths we patch, for hosts that run a clone without applying its object patches
    patches: dict[str, Any] = field(default_factory=dict)
    #: the patcher the host samples with (the last script's clone): its object patches are what
    #: the model must carry during a call
    sampled: Callable[[], Any] | None = None

    @classmethod
    def from_run(cls, run: ForgeRun, double: int, context: ContextUnits | None = None) -> FluxRun:
        """Split ``run``'s units by variant; each part shares the clock."""
        parts: dict[str, ForgeRun | None] = {}
        for variant in ("xlabs-flux", "instantx-flux"):
            picked = [i for i, u in enumerate(run.units) if u.adapter.info.variant == variant]
            units = [run.units[i] for i in picked]
            ranges = [run.sigma_ranges[i] for i in picked]
            part = dataclasses.replace(run, units=units, sigma_ranges=ranges, chained={}) if units else None
            if part is not None:
                part._active = (None, [])
            parts[variant] = part
        return cls(parts["xlabs-flux"], parts["instantx-flux"], context, double)

    def close(self) -> None:
        """The pass is over: patches left on the model call the class's own methods from now on,
        and let go of the units and their K/V (Forge keeps the last patched clone, and so these
        patches, until another model is loaded)."""
        self.closed = True
        self.sampled = None
        for part in (self.xlabs, self.instantx):
            if part is not None:
                part.release()


class QueryTap(ChainedPatch):
    """Stands in for a QK norm's ``forward``: the norm (or the patch before ours), plus a note of
    its query."""

    def __init__(self, previous: Any, pristine: Any, run: FluxRun, slot: _Query) -> None:
        super().__init__(previous, pristine, run)
        self.slot = slot

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Forge calls norm(q, k, v); ersatzForge's QKNorm takes (q, k): the first result is q either way
        out = self.call_previous(*args, **kwargs)
        if not self.run.closed:
            self.slot.q = out[0]
        return out


class FluxBlockPatch(ChainedPatch):
    """XLabs: stands in for ``double_blocks.N.forward``: the block, then the image term."""

    def __init__(self, index: int, previous: Any, pristine: Any, run: FluxRun, slot: _Query) -> None:
        super().__init__(previous, pristine, run)
        self.index = index
        self.slot = slot

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.slot.q = None
        try:
            img, txt = self.call_previous(*args, **kwargs)
            q = self.slot.q
        finally:
            self.slot.q = None  # never keep a step's activations past the block
        extra = self.run.call.extra
        xlabs = self.run.xlabs
        if q is None or extra is None or xlabs is None or self.run.closed:
            return img, txt
        rows, tokens = int(q.shape[0]), int(q.shape[2])
        terms = xlabs.terms_for(self.index, rows, tokens, q.device, extra)
        return add_flux_image_term(img, q, terms, xlabs.upcast), txt


class AttentionTap(ChainedPatch):
    """InstantX: stands in for the ``forward`` of the Linear after a block's attention
    (``img_attn.proj`` of a double block, ``linear2`` of a single one): the term is added to its
    input's attention channels, then the Linear (or the patch before ours) runs."""

    def __init__(self, layer: int, previous: Any, pristine: Any, run: FluxRun, slot: _Query, single: bool) -> None:
        super().__init__(previous, pristine, run)
        self.layer = layer
        self.slot = slot
        self.single = single

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        q = self.slot.q
        if not self.slot.shared:
            self.slot.q = None
        extra = self.run.call.extra
        instantx = self.run.instantx
        if q is not None and extra is not None and instantx is not None and not self.run.closed:
            x = self._with_term(x, q, extra, instantx)
        return self.call_previous(x, *args, **kwargs)

    def _with_term(self, x: torch.Tensor, q: torch.Tensor, extra: dict, instantx: ForgeRun) -> torch.Tensor:
        length = int(q.shape[2])
        image = image_tokens(extra) if self.single else length
        text = length - image if self.single else 0
        if image is None or image <= 0 or text < 0:
            return x
        terms = instantx.terms_for(self.layer, int(q.shape[0]), image, q.device, extra)
        if not terms:
            return x
        return add_to_attention(x, q, single_stream_terms(terms, text), instantx.upcast)


class FluxUnetWrapper:
    """The unet function wrapper: Forge calls it as ``wrapper(apply_model, {"input", "timestep",
    "c", "cond_or_uncond"})`` for each batch of chunks (``sampling_function.py``)."""

    def __init__(self, run: FluxRun, previous: Any = None) -> None:
        self.run = run
        self.previous = previous

    def __call__(self, apply_model: Any, args: dict) -> torch.Tensor:
        if self.run.closed:
            return self._model(apply_model, args)
        context = self.run.context
        if context is not None:
            return context.run_call(args, lambda sub: self._observed(apply_model, sub))
        return self._observed(apply_model, args)

    def _observed(self, apply_model: Any, args: dict) -> torch.Tensor:
        x = args["input"]
        live = getattr(apply_model, "__self__", None)  # the model the host runs (KModel)
        undo = install_missing(live, self._due()) if live is not None else []
        self.run.call.extra = {
            "cond_or_uncond": list(args["cond_or_uncond"]),
            "sigmas": args["timestep"],
            "original_shape": list(x.shape),  # the latent: token grid = ceil(h/2) × ceil(w/2)
        }
        try:
            return self._model(apply_model, args)
        finally:
            self.run.call.extra = None
            put_back(undo)

    def _due(self) -> dict[str, Any]:
        """What the sampled patcher's object patches hold on the attributes we patch (ours, or
        another script's wrapping ours when it ran after us): where the host has applied them,
        the model already carries exactly these."""
        sampled = self.run.sampled() if self.run.sampled is not None else None
        own = getattr(sampled, "object_patches", None)
        if not isinstance(own, dict):
            return self.run.patches
        return {name: own.get(name, patch) for name, patch in self.run.patches.items()}

    def _model(self, apply_model: Any, args: dict) -> torch.Tensor:
        if self.previous is not None:
            return self.previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def to(self, device: Any) -> FluxUnetWrapper:
        """Forge moves a wrapper with the model when it has ``to``; the K/V travel in KVModule."""
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device)
        return self

    def __deepcopy__(self, memo: dict) -> FluxUnetWrapper:
        # UnetPatcher.clone() deep-copies model_options; the call state must stay shared.
        return self


_OURS = (QueryTap, FluxBlockPatch, AttentionTap)


def register_flux_patches(patcher: Any, run: FluxRun) -> None:
    """Object patches on the blocks the run's units need and the unet function wrapper, on
    ``patcher`` (a clone); the patches are also kept in ``run.patches`` for the wrapper."""
    model = patcher.model.diffusion_model

    def _patch(patcher: Any, name: str, make: Any) -> None:
        # chained onto the clone's own list
        patch = make(chain_target(patcher, name, _OURS), unpatched(patcher.model, name))
        patcher.add_object_patch(name, patch)
        run.patches[name] = patch

    instantx = run.instantx is not None
    if run.xlabs is not None or instantx:
        for n in range(len(model.double_blocks)):
            block = _DOUBLE.format(n)
            slot = _Query(shared=run.xlabs is not None and instantx)
            _patch(patcher, f"{block}.img_attn.norm.forward", lambda p, o, s=slot: QueryTap(p, o, run, s))
            if run.xlabs is not None:
                _patch(patcher, f"{block}.forward", lambda p, o, n=n, s=slot: FluxBlockPatch(n, p, o, run, s))
            if instantx:
                tap = lambda p, o, n=n, s=slot: AttentionTap(n, p, o, run, s, single=False)  # noqa: E731
                _patch(patcher, f"{block}.img_attn.proj.forward", tap)
    if instantx:
        for m in range(len(model.single_blocks)):
            block = _SINGLE.format(m)
            slot = _Query()
            _patch(patcher, f"{block}.norm.forward", lambda p, o, s=slot: QueryTap(p, o, run, s))
            tap = lambda p, o, m=m, s=slot: AttentionTap(run.double + m, p, o, run, s, single=True)  # noqa: E731
            _patch(patcher, f"{block}.linear2.forward", tap)
    previous = patcher.model_options.get("model_function_wrapper")
    while isinstance(previous, FluxUnetWrapper):  # ours from an earlier pass: replaced, not chained
        previous = previous.previous
    patcher.set_model_unet_function_wrapper(FluxUnetWrapper(run, previous))


def patched_clone(
    patcher: Any, run: ForgeRun, context: ContextUnits | None = None, sampled: Callable[[], Any] | None = None
) -> tuple[Any, FluxRun]:
    """A clone of ``patcher`` carrying the units: patches, wrapper and the K/V for Forge's memory
    management; and the pass's :class:`FluxRun` (close it when the pass ends). ``patcher`` itself
    is not changed. ``sampled`` answers the patcher the host will sample with (``forge_objects.unet``
    once every script has run); without it the wrapper puts on our own patches where missing."""
    clone = patcher.clone()
    flux_run = FluxRun.from_run(run, len(patcher.model.diffusion_model.double_blocks), context)
    flux_run.sampled = sampled
    register_flux_patches(clone, flux_run)
    modules = [KVModule(run.units)] if run.units else []
    if context is not None:
        modules.append(context.module())
    run.handed.extend(modules)  # taken off the host's loaded models when the pass ends, released with the run
    for module in modules:
        clone.add_extra_torch_module_during_sampling(module, cast_to_unet_dtype=False)
    return clone, flux_run
