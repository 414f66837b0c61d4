"""The attn2 replace patch that adds the image term on Forge, and what it needs per call.

Forge's transformer block (``backend/nn/unet.py``; in Forge 1, ``ldm_patched/ldm/modules/attention.py``),
when a replace patch is registered for its key, computes ``q = to_q(x)``, ``k = to_k(context)``, ``v = to_v(context)``, calls
``patch(q, k, v, extra_options)`` and applies ``to_out`` to the result itself. So the patch
returns the pre-``to_out`` tensor: the host's own attention kernel (``ForgeRun.attention``, named by
the family's ``readers``), or the previous patch on that key (which
then keeps its own contribution) plus Σ image terms from :func:`~..core.job.layer_terms`, the
entry point A1111's hooks use too. ``to_out`` and its bias still run exactly once.

Rows: ``extra_options["cond_or_uncond"]`` lists the equal batch chunks of the call (0 = cond,
1 = uncond), in whatever order Forge batched them ([1, 0] when both fit, one per call otherwise,
cond only when the uncond is skipped).

Start/end: the same fractions of the sampling steps as on A1111. Forge's CFG denoiser reports
(step, total, sigma) through ``on_cfg_denoiser`` before it runs the UNet; the patch uses that
step when the call's ``extra_options["sigmas"]`` is that sigma. A UNet call outside the
sampler's steps (another extension running the UNet itself) is gated by sigma instead, with the
model's schedule (Forge 2's ``predictor``, Forge 1's ``model_sampling``: ``percent_to_sigma``), as
Forge's own ControlNet does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...core.attend.attention import ImageKV, add_image_attention
from ...core.job import PreparedUnit, layer_terms
from .readers import Kernel, forge2_attention

log = logging.getLogger("ipadapter")


def row_layout(cond_or_uncond: Sequence[int], rows: int) -> tuple[bool, ...] | None:
    """One bool per row (True = cond) from Forge's chunk list, or ``None`` if it does not divide."""
    chunks = len(cond_or_uncond)
    if not chunks or rows % chunks:
        return None
    per_chunk = rows // chunks
    return tuple(int(c) == 0 for c in cond_or_uncond for _ in range(per_chunk))


def row_images(cond_or_uncond: Sequence[int], rows: int) -> tuple[int | None, ...]:
    """The batch image each row belongs to (``None`` for uncond rows): every chunk holds the
    batch's images in order, so a row's image is its place in its chunk."""
    per_chunk = rows // len(cond_or_uncond)
    return tuple(i if int(c) == 0 else None for c in cond_or_uncond for i in range(per_chunk))


def row_refs(cond_or_uncond: Sequence[int], rows: int) -> tuple[int, ...]:
    """The batch image of every row, uncond rows included (for references per image)."""
    per_chunk = rows // len(cond_or_uncond)
    return tuple(i for _ in cond_or_uncond for i in range(per_chunk))


@dataclass
class StepClock:
    """The denoiser's latest (sigma, step fraction), reported by ``on_cfg_denoiser``."""

    sigma: float | None = None
    progress: float = 0.0

    def report(self, sigma: float, progress: float) -> None:
        self.sigma, self.progress = sigma, progress

    def progress_at(self, sigma: float) -> float | None:
        if self.sigma is None or not math.isclose(sigma, self.sigma, rel_tol=1e-5, abs_tol=1e-8):
            return None
        return self.progress


@dataclass
class ForgeRun:
    """One sampling pass: the prepared units, their sigma ranges and the clock."""

    units: list[PreparedUnit]
    sigma_ranges: list[tuple[float, float]]  # (sigma at start, sigma at end) per unit
    clock: StepClock
    upcast: bool = False
    maps: bool = False  # attention maps wanted: rows are told which image they belong to
    _active: tuple[tuple | None, list[PreparedUnit]] = (None, [])
    per_image_refs: bool = False  # a unit has a reference per generated image
    _warned: bool = False
    chained: dict[str, int] = field(default_factory=dict)  # type name of a kept patch → layers
    attention: Kernel = forge2_attention  # the host's own kernel (readers.py), for layers with no previous patch
    #: Per denoiser step (its progress): whether any UNet call of it ran uncond rows.
    uncond_by_step: dict[float, bool] = field(default_factory=dict)
    #: The modules handed to Forge's memory management with this pass's clone (the K/V; Redux's
    #: tokens): taken off its list of loaded models when the pass ends, released with the run.
    handed: list[nn.Module] = field(default_factory=list)

    def release(self) -> None:
        """Let go of the units and their K/V once the generation is over. Forge keeps the last
        pass's patched clone (in ``forge_objects`` and its list of loaded models) until the next
        generation loads another, and that clone holds this run through its patches."""
        self.units = []
        self.sigma_ranges = []
        self._active = (None, [])
        for module in self.handed:
            module.release()
        self.handed = []

    @property
    def steps_seen(self) -> int:
        return len(self.uncond_by_step)

    @property
    def uncond_skipped_steps(self) -> int:
        return sum(not seen for seen in self.uncond_by_step.values())

    def _saw_rows(self, layout: tuple[bool, ...], sigma: float | None) -> None:
        progress = self.clock.progress_at(sigma) if sigma is not None else None
        if progress is not None:
            self.uncond_by_step[progress] = self.uncond_by_step.get(progress, False) or not all(layout)

    def active_units(self, sigma: float | None) -> list[PreparedUnit]:
        """Units active at this call: by step fraction when the denoiser reported this sigma,
        else by sigma range. Cached per sigma (every layer of a step asks the same)."""
        key = (sigma, self.clock.sigma, self.clock.progress)
        if self._active[0] == key:
            return self._active[1]
        progress = self.clock.progress_at(sigma) if sigma is not None else self.clock.progress
        if progress is not None:
            active = [u for u in self.units if u.active_at(progress)]
        else:
            assert sigma is not None
            active = [
                u for u, (hi, lo) in zip(self.units, self.sigma_ranges, strict=True) if u.applies and lo <= sigma <= hi
            ]
        self._active = (key, active)
        return active

    def terms(self, layer: int, q: torch.Tensor, extra_options: dict) -> list[ImageKV]:
        """The terms of an attn2 call with query ``q`` ([B, N, inner])."""
        return self.terms_for(layer, int(q.shape[0]), int(q.shape[1]), q.device, extra_options)

    def terms_for(self, layer: int, rows: int, tokens: int, device: torch.device, extra_options: dict) -> list[ImageKV]:
        """The terms at ``layer`` for a call of ``rows`` rows over ``tokens`` spatial tokens;
        ``extra_options`` holds Forge's ``cond_or_uncond``, ``sigmas`` and ``original_shape``."""
        layout = row_layout(extra_options.get("cond_or_uncond") or (), rows)
        if layout is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "IP-Adapter: a UNet call with %d rows does not split into chunks %s; the image prompt is "
                    "skipped for such calls.", rows, extra_options.get("cond_or_uncond"),
                )  # fmt: skip
            return []
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas.reshape(-1)[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        if layer == 0:  # once per UNet call
            self._saw_rows(layout, sigma)
        shape = extra_options.get("original_shape")
        latent_hw = (int(shape[2]), int(shape[3])) if shape is not None and len(shape) == 4 else None
        chunks = extra_options["cond_or_uncond"]
        images = row_images(chunks, len(layout)) if self.maps else None
        refs = row_refs(chunks, len(layout)) if self.per_image_refs else None
        units = self.active_units(sigma)
        terms = layer_terms(units, layer, layout, tokens, latent_hw, images=images, refs=refs)
        return [_on_device(t, device) for t in terms]


def _on_device(term: ImageKV, device: torch.device) -> ImageKV:
    """K/V normally live where Forge loaded the KV module; follow q if it ever put them elsewhere."""
    if term.k.device == device:
        return term
    mask = term.mask.to(device) if term.mask is not None else None
    return dataclasses.replace(term, k=term.k.to(device), v=term.v.to(device), mask=mask)


class Attn2Patch:
    """One layer's replace patch. ``previous`` is the patch that held the key before (Forge's
    built-in IP-Adapter, another extension): it runs instead of the plain kernel, so its
    contribution stays and ours is added on top, like two units."""

    def __init__(self, layer: int, run: ForgeRun, previous: Any = None) -> None:
        self.layer = layer
        self.run = run
        self.previous = previous

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = int(extra_options["n_heads"])
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = self.run.attention(q, k, v, extra_options)
        terms = self.run.terms(self.layer, q, extra_options)
        if not terms:
            return out
        return add_image_attention(out, q, heads, terms, self.run.upcast)

    def __deepcopy__(self, memo: dict) -> Attn2Patch:
        # UnetPatcher.clone() deep-copies model_options; the K/V must be shared, not copied.
        return self

    def set_new_condition(self, **kwargs: Any) -> None:
        """Forge's built-in IP-Adapter adds its unit to whatever object holds its key through
        this method; hand it to the patch we wrapped so its unit still applies."""
        self._forward_to_previous("set_new_condition", kwargs, "built-in IP-Adapter")

    def add(self, callback: Any, **kwargs: Any) -> None:
        """ersatzForge's built-in PuLID adds to the object holding its key through ``add``."""
        self._forward_to_previous("add", {"callback": callback, **kwargs}, "PuLID")

    def _forward_to_previous(self, method: str, kwargs: dict, who: str) -> None:
        if self.previous is not None and hasattr(self.previous, method):
            getattr(self.previous, method)(**kwargs)
            return
        raise RuntimeError(
            f"IP-Adapter (extension) holds this attn2 patch key, so the WebUI's {who} cannot add its unit. "
            "Keep this extension's script after the WebUI's built-in ControlNet (the default order)."
        )


class KVModule(nn.Module):
    """The units' K/V as buffers, handed to Forge's memory management
    (``add_extra_torch_module_during_sampling``): it counts them, loads them with the UNet and may
    offload them. Moving the module moves the tensors the units read."""

    def __init__(self, units: Sequence[PreparedUnit]) -> None:
        super().__init__()
        self._units = list(units)
        for u, unit in enumerate(self._units):
            for n, (k, v) in enumerate(unit.kv.kv):
                self.register_buffer(f"k_{u}_{n}", k, persistent=False)
                self.register_buffer(f"v_{u}_{n}", v, persistent=False)

    def release(self) -> None:
        self._units = []
        self._buffers.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> KVModule:
        super()._apply(fn, *args, **kwargs)
        for u, unit in enumerate(self._units):
            unit.kv.replace([(getattr(self, f"k_{u}_{n}"), getattr(self, f"v_{u}_{n}")) for n in range(len(unit.kv))])
        return self
