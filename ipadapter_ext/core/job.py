"""One generation's IP-Adapter state: the prepared units, the hooks, and the row layout.

Created when a generation starts, attached to a UNet for each sampling pass, and torn down in a
``finally``. It never assumes an order of cond and uncond rows: the host reports the full layout
of each denoiser call (``begin_step``: how many cond rows, how many rows in all), and a pre-hook
on the UNet consumes that layout in order as the host splits it into UNet calls (one call with
everything; chunks of the batch size; cond chunks then a separate uncond call; uncond skipped).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attend.attention import SCALERS, ImageKV, WeightMode
from .attend.attention_map import UnitMap
from .attend.context import ContextUnit
from .attend.hooks import Attn2Hooks
from .attend.kv import UnitKV
from .attend.lora import FaceIDLoRA, LoRAHooks, ldm_attention_pairs
from .attend.masks import RegionMask
from .encode.tiles import BandMasks, Tiling
from .load.adapter import IPAdapterModel

log = logging.getLogger("ipadapter")


@dataclass
class PreparedUnit:
    """A unit ready for sampling: K/V computed, schedule and weight fixed."""

    number: int  # 1-based, as shown in the UI
    adapter: IPAdapterModel
    kv: UnitKV
    weight: float
    start: float = 0.0
    end: float = 1.0
    mode: WeightMode = WeightMode.V_ONLY
    description: str = ""
    #: Weight of each layer (adapter key order), from the weight type; default: ``weight`` everywhere.
    layer_weights: tuple[float, ...] = ()
    mask: RegionMask | None = None
    weight_type: str = "linear"
    #: Accumulates where the unit acts (cond rows), when the generation asked for attention maps.
    attention_map: UnitMap | None = None
    #: FaceID's own LoRA on every attention layer, applied while the job is attached.
    lora: FaceIDLoRA | None = None
    lora_strength: float = 0.0
    #: FaceID: what the face analysis found in each reference (for the "detected faces" output).
    faces: tuple = ()
    #: A tiled reference: its tiling, and each tile's band of the output (times ``mask``).
    tiling: Tiling | None = None
    bands: BandMasks | None = None
    #: Layers (adapter key order) whose tokens are the composition image's, and their bands.
    alt_layers: frozenset[int] = frozenset()
    alt_bands: BandMasks | None = None

    def __post_init__(self) -> None:
        if not self.layer_weights:
            self.layer_weights = (self.weight,) * len(self.kv)
        self._scaler = SCALERS[self.mode]

    @property
    def applies(self) -> bool:
        return any(w != 0 for w in self.layer_weights)

    @property
    def acts_on_uncond(self) -> bool:
        """A precise weight type: some layer with a weight moves the reference to the uncond rows,
        which act only through CFG (nothing where the uncond pass is skipped or CFG is 1)."""
        return any(s and w != 0 for s, w in zip(self.kv.swapped, self.layer_weights, strict=True))

    @property
    def applies_lora(self) -> bool:
        """The LoRA goes with the unit: never for a unit that adds nothing (weight 0 is exactly no
        unit), for the whole generation otherwise, as the adapter was trained with it."""
        return self.lora is not None and self.lora_strength != 0 and self.applies

    def active_at(self, progress: float) -> bool:
        return self.applies and self.start <= progress <= self.end

    def term(
        self,
        layer: int,
        layout: Sequence[bool],
        tokens: int,
        latent_hw: tuple[int, int] | None,
        *,
        images: Sequence[int | None] | None = None,
        refs: Sequence[int] | None = None,
    ) -> ImageKV | None:
        """This unit's term at ``layer`` for rows laid out as ``layout``, or ``None`` (weight 0).
        ``images[i]`` is the generated image of row i (``None``: uncond); with an attention map,
        the term records its output there. ``refs[i]`` is row i's image, cond or uncond, for
        units with a reference per image."""
        weight = self.layer_weights[layer]
        if weight == 0:
            return None
        k, v = self.kv.rows(layer, layout, refs)
        hw = latent_hw or (round(tokens**0.5), round(tokens**0.5))
        groups = self.kv.groups[layer]
        if groups > 1:
            bands = self.alt_bands if layer in self.alt_layers else self.bands
            assert bands is not None and bands.groups == groups
            mask = bands.for_layer(tokens, hw, k.device, k.dtype)
        else:
            mask = None if self.mask is None else self.mask.for_layer(tokens, hw, k.device, k.dtype)
        record = None
        if self.attention_map is not None and images is not None:
            record = functools.partial(self.attention_map.add, images=images, latent_hw=hw)
        return ImageKV(k, v, weight, self._scaler, mask, record, groups)

    def log_line(self) -> str:
        extras = "" if self.weight_type == "linear" else f" · {self.weight_type}"
        extras += "" if self.mode is WeightMode.V_ONLY else f" · {self.mode.value}"
        extras += " · masked" if self.mask is not None else ""
        extras += f" · tiles {self.tiling.describe()}" if self.tiling is not None else ""
        extras += " · composition image" if self.alt_layers else ""
        return (
            f"IP-Adapter: unit {self.number} · {self.description or self.adapter.info.describe()} · "
            f"{self.adapter.info.num_layers} layers · {self.kv.num_tokens} tokens · weight {self.weight:g}{extras} · "
            f"steps {self.start:.0%}–{self.end:.0%}"
        )


def layer_terms(
    units: Iterable[PreparedUnit],
    layer: int,
    layout: Sequence[bool],
    tokens: int,
    latent_hw: tuple[int, int] | None = None,
    *,
    images: Sequence[int | None] | None = None,
    refs: Sequence[int] | None = None,
) -> list[ImageKV]:
    """The image terms of ``units`` at one layer: the one entry point every host uses (A1111's
    hooks, Forge's attn2 patches), so weight types, masks and swaps behave the same on both.
    ``layout[i]`` says whether row i is cond; ``latent_hw`` is the UNet input's height and width;
    ``images[i]`` is row i's image index (``None`` for uncond), for the units' attention maps;
    ``refs[i]`` row i's image whether cond or uncond, for units with a reference per image."""
    out = []
    for unit in units:
        term = unit.term(layer, layout, tokens, latent_hw, images=images, refs=refs)
        if term is not None:
            out.append(term)
    return out


def row_images(cond_rows: int, total_rows: int) -> tuple[int | None, ...]:
    """The batch image of each row of an A1111 denoiser call: the cond rows come first, grouped by
    image (an image with an AND prompt has several), then one uncond row per image. With no
    uncond rows (skipped), each cond row is taken as its own image."""
    images = total_rows - cond_rows or cond_rows
    return tuple(r * images // cond_rows for r in range(cond_rows)) + (None,) * (total_rows - cond_rows)


def row_refs(cond_rows: int, total_rows: int) -> tuple[int, ...]:
    """As :func:`row_images`, with the uncond rows' images too (one uncond row per image, in order)."""
    cond = tuple(i if i is not None else 0 for i in row_images(cond_rows, total_rows)[:cond_rows])
    return cond + tuple(range(total_rows - cond_rows))


@dataclass
class _Rows:
    """The cond/uncond layout of the current denoiser call and how much of it the UNet consumed."""

    layout: tuple[bool, ...] = ()
    images: tuple[int | None, ...] = ()  # per row of the denoiser call: its batch image (None: uncond)
    refs: tuple[int, ...] = ()  # per row: its batch image, uncond rows included
    cursor: int = 0
    current: tuple[bool, ...] | None = None
    current_images: tuple[int | None, ...] | None = None
    current_refs: tuple[int, ...] | None = None
    latent_hw: tuple[int, int] | None = None
    warned: bool = False
    saw_uncond: bool = False  # some UNet call of this denoiser call ran uncond rows


@dataclass(eq=False)  # identity semantics: jobs are tracked in weak sets
class Job:
    units: list[PreparedUnit]
    upcast: bool = False
    progress: float = 0.0
    _rows: _Rows = field(default_factory=_Rows)
    _hooks: Attn2Hooks | None = None
    _unet_handle: RemovableHandle | None = None
    _loras: list[LoRAHooks] = field(default_factory=list)
    unet: nn.Module | None = None
    #: Attention maps wanted: each call's rows are told which batch image they belong to.
    record_rows: bool = False
    #: Where the UNet's input was last seen; the K/V follow it (``None``: not seen yet).
    _device: torch.device | None = None
    #: Flux Redux units: context tokens rather than attention terms (hosts with Flux apply them).
    context: list[ContextUnit] = field(default_factory=list)
    #: Denoiser calls seen, and those whose uncond rows never reached the UNet (skipped: the
    #: precise weight types' negative side had no effect there).
    steps_seen: int = 0
    uncond_skipped_steps: int = 0

    # -- host events -------------------------------------------------------------------------
    def begin_step(self, progress: float, cond_rows: int, total_rows: int) -> None:
        """Called once per denoiser call, before the UNet runs: rows [0, cond_rows) are cond."""
        self._count_step()
        self.progress = progress
        layout = tuple(i < cond_rows for i in range(total_rows))
        images = row_images(cond_rows, total_rows) if self.record_rows else ()
        refs = row_refs(cond_rows, total_rows) if self.per_image_refs else ()
        self._rows = _Rows(layout=layout, images=images, refs=refs, warned=self._rows.warned)

    @functools.cached_property
    def per_image_refs(self) -> bool:
        """Some unit has a reference per generated image: rows must be told their image."""
        return any(unit.kv.per_image > 1 for unit in self.units)

    def attach(self, unet: nn.Module, attn2: Sequence[nn.Module]) -> None:
        """Hook ``attn2`` (in adapter key order) and the UNet's forward for row tracking."""
        self.detach()
        try:
            self.attach_loras(unet)
            self._hooks = Attn2Hooks(attn2, self._terms, upcast=self.upcast).install()
            self._unet_handle = unet.register_forward_pre_hook(self._before_unet, with_kwargs=True)
            self.unet = unet
        except Exception:
            self.detach()
            raise

    def attach_loras(self, unet: nn.Module) -> None:
        """FaceID units' LoRAs on ``unet``'s attention layers (Forge, which patches attention
        itself, calls only this); :meth:`detach` removes them."""
        self.detach_loras()
        units = [u for u in self.units if u.applies_lora]
        if not units:
            return
        pairs = ldm_attention_pairs(unet.named_modules())
        try:
            for unit in units:
                assert unit.lora is not None
                self._loras.append(unit.lora.attach(pairs, unit.lora_strength))
        except Exception:
            self.detach_loras()
            raise

    def detach_loras(self) -> None:
        while self._loras:
            self._loras.pop().remove()

    def _count_step(self) -> None:
        rows = self._rows
        if rows.layout:
            self.steps_seen += 1
            self.uncond_skipped_steps += not rows.saw_uncond

    def detach(self) -> None:
        """Idempotent: removes every hook this job installed."""
        self._count_step()
        self.detach_loras()
        if self._hooks is not None:
            self._hooks.remove()
            self._hooks = None
        if self._unet_handle is not None:
            self._unet_handle.remove()
            self._unet_handle = None
        self.unet = None
        self._rows = _Rows(warned=self._rows.warned)

    @property
    def attached(self) -> bool:
        return self._hooks is not None

    # -- per call ----------------------------------------------------------------------------
    def follow_device(self, device: torch.device) -> None:
        """Move every unit's K/V to ``device``, where the UNet now runs: a host may have placed the
        UNet elsewhere when the job was prepared (A1111's --medvram/--lowvram keep it on the CPU
        until its first forward) or move it between passes. Once per change, not per call."""
        if device != self._device:
            for unit in self.units:
                unit.kv.to(device)
            self._device = device

    def _before_unet(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        self.follow_device(x.device)
        rows = self._rows
        n = int(x.shape[0])
        layout = rows.layout[rows.cursor : rows.cursor + n]
        rows.current_images = rows.images[rows.cursor : rows.cursor + n] if rows.images else None
        rows.current_refs = rows.refs[rows.cursor : rows.cursor + n] if rows.refs else None
        rows.cursor += n
        rows.latent_hw = (int(x.shape[-2]), int(x.shape[-1])) if x.ndim == 4 else None
        if len(layout) == n:
            rows.current = layout
            rows.saw_uncond = rows.saw_uncond or not all(layout)
            return
        rows.current = None
        if not rows.warned:
            rows.warned = True
            log.warning(
                "IP-Adapter: a UNet call with %d rows did not match the denoiser's layout %s; "
                "the image prompt is skipped for such calls.",
                n,
                rows.layout,
            )

    def _terms(self, layer: int, q: torch.Tensor, _context: torch.Tensor | None) -> list[ImageKV]:
        layout = self._rows.current
        if layout is None:
            return []
        active = (unit for unit in self.units if unit.active_at(self.progress))
        rows = self._rows
        return layer_terms(
            active, layer, layout, int(q.shape[1]), rows.latent_hw, images=rows.current_images, refs=rows.current_refs
        )
