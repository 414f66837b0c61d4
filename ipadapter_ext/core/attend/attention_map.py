"""Where each unit acts: the size of its image term per spatial token, summed per image.

At every hooked layer and step where a unit applies, ``add_image_attention`` hands the unit's
term ``out`` (``w·Attn(q, K_ip, V_ip)`` as [rows, heads, N, d], region mask applied) to
:meth:`UnitMap.add`, which reuses it: no second attention pass. The map is the per-token L2 norm
of that term over all channels (heads × head_dim), i.e. the size of what the unit adds to the
token before ``to_out``, for the cond rows only, summed over layers and steps.

Accumulator grid (:func:`accumulator_grid`): the latent's grid halved as the UNet halves it (the
grid of its second level), the long side capped at :data:`MAX_SIDE` cells, the aspect ratio kept:
32×32 for 512 px SD1.5, 64×64 for 1024 px SDXL, so at most 16 KiB of float32 per unit and image
however many layers and steps are added. It is fixed by the first ``add`` (or the constructor).

Resampling each layer's grid to it: area (``F.interpolate(mode="area")``, an adaptive average
pool) both ways. Down, a cell is the mean of the tokens it covers, so finer layers keep their
total and thin structures still count; up, a coarse token is copied to the cells it covers. A
cell only ever sees the tokens that overlap it, so a region the unit does not touch (its mask is
0 over whole tokens) stays exactly 0; bilinear would bleed influence across region borders.
Smoothing is left to :func:`render`, which upsamples the accumulator bilinearly to the image.

Normalisation: one scale per generation, the max over every unit and image (:func:`shared_scale`),
so a weaker unit looks weaker; an all-zero map stays all zero and renders as "no influence".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from .masks import token_grid

log = logging.getLogger("ipadapter")

#: Long side of the accumulator grid, in cells.
MAX_SIDE = 64


def accumulator_grid(latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The fixed (rows, columns) a unit's map is accumulated at for a latent of ``latent_hw``."""
    h, w = (max(1, math.ceil(s / 2)) for s in latent_hw)
    longest = max(h, w)
    if longest > MAX_SIDE:
        h, w = max(1, round(h * MAX_SIDE / longest)), max(1, round(w * MAX_SIDE / longest))
    return h, w


class UnitMap:
    """One unit's accumulated influence during one sampling pass, one grid per generated image."""

    def __init__(self, latent_hw: tuple[int, int] | None = None) -> None:
        self.grid: tuple[int, int] | None = accumulator_grid(latent_hw) if latent_hw else None
        self._acc: dict[int, torch.Tensor] = {}
        self._warned = False

    def add(self, out: torch.Tensor, images: Sequence[int | None], latent_hw: tuple[int, int]) -> None:
        """Add the term ``out`` [rows, heads, N, d] of one layer call; ``images[i]`` is the image
        of row i, ``None`` for an uncond row (skipped). Rows of one image (AND prompts) add up."""
        if len(images) != out.shape[0]:
            if not self._warned:
                self._warned = True
                log.warning(
                    "IP-Adapter: attention map skips a call of %d rows with %d image indices", out.shape[0], len(images)
                )
            return
        rows = [i for i, image in enumerate(images) if image is not None]
        if not rows:
            return
        if self.grid is None:
            self.grid = accumulator_grid(latent_hw)
        gh, gw = token_grid(out.shape[2], latent_hw)
        together = rows == list(range(rows[0], rows[-1] + 1))  # cond rows usually come first
        out = out.detach()[rows[0] : rows[-1] + 1] if together else out.detach()[rows]  # a view if together
        norms = torch.linalg.vector_norm(out, dim=(1, 3), dtype=torch.float32).view(len(rows), 1, gh, gw)
        if (gh, gw) != self.grid:
            norms = F.interpolate(norms, size=self.grid, mode="area")
        for row, cells in zip(rows, norms[:, 0], strict=True):
            image = images[row]
            acc = self._acc.get(image)
            # Out of place: the accumulators may be inference tensors, updated outside that mode.
            self._acc[image] = cells.clone() if acc is None else acc + cells

    @property
    def nbytes(self) -> int:
        """Memory held by the accumulators (constant once every image has been seen)."""
        return sum(t.numel() * t.element_size() for t in self._acc.values())

    def maps(self, images: Iterable[int] = ()) -> dict[int, torch.Tensor]:
        """Image index → accumulated map [rows, cols], float32 on the CPU (moved once, here).
        ``images`` lists indices to include even if nothing was recorded for them (all zero)."""
        result = {i: t.to("cpu", torch.float32, copy=True) for i, t in sorted(self._acc.items())}
        for i in images:
            if i not in result:
                result[i] = torch.zeros(self.grid or (1, 1))
        return result


def shared_scale(maps: Iterable[torch.Tensor]) -> float:
    """The max over all ``maps`` (every unit and image of a generation); 0.0 when all are zero."""
    scale = 0.0
    for m in maps:
        if m.numel():
            scale = max(scale, float(m.float().nan_to_num(0.0, 0.0, 0.0).max()))
    return scale


def normalise(heat: torch.Tensor, scale: float) -> torch.Tensor:
    """``heat / scale`` clamped to [0, 1]; all zero when ``scale`` is 0."""
    heat = heat.float()
    if not scale > 0:
        return torch.zeros_like(heat)
    return (heat.nan_to_num(0.0, posinf=scale) / scale).clamp_(0.0, 1.0)


# --- rendering ------------------------------------------------------------------------------

#: matplotlib's 'inferno' at 0, 0.1, …, 1 (perceptually uniform, dark to bright); linear between.
_INFERNO = torch.tensor(
    [(0, 0, 4), (22, 11, 57), (66, 10, 104), (106, 23, 110), (147, 38, 103), (188, 55, 84),
     (221, 81, 58), (243, 120, 25), (252, 165, 10), (246, 215, 70), (252, 255, 164)],
    dtype=torch.float32,
)  # fmt: skip
ALPHA_COLD, ALPHA_HOT = 0.3, 0.85  # overlay opacity at 0 and at the shared max
BLANK_DIM = 0.45  # brightness of the image under an all-zero map
SCALE_NOTE = "one scale for all units"  # short: maps are as wide as the image, often 512 px or less


def colormap(heat: torch.Tensor) -> torch.Tensor:
    """[...] in [0, 1] → [..., 3] RGB floats in [0, 255]."""
    x = heat.float().clamp(0.0, 1.0) * (len(_INFERNO) - 1)
    i = x.floor().long().clamp_(max=len(_INFERNO) - 2)
    f = (x - i)[..., None]
    return _INFERNO[i] * (1 - f) + _INFERNO[i + 1] * f


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1: scalable
    except TypeError:
        return ImageFont.load_default()  # the fixed bitmap font


def _text(font: object, text: str) -> str:
    # The bitmap font only knows Latin-1; a label may not.
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def band_borders(axis: str, bands: Sequence[tuple[float, float]]) -> list[float]:
    """Where one tile's band hands over to the next, as fractions along ``axis``: the middle of
    each overlap (or the shared edge)."""
    return [(bands[i][1] + bands[i + 1][0]) / 2 for i in range(len(bands) - 1)] if axis in ("x", "y") else []


def _draw_bands(draw: ImageDraw.ImageDraw, size: tuple[int, int], axis: str, bands, font) -> None:
    """Dashed lines between a tiled unit's bands and a "tile i" tag in each."""
    width, height = size
    edges = [0.0, *band_borders(axis, bands), 1.0]
    for edge in edges[1:-1]:
        for start in range(0, height if axis == "x" else width, 8):
            end = start + 4
            if axis == "x":
                x = round(edge * width)
                draw.line([(x, start), (x, min(end, height))], fill=(255, 255, 255), width=1)
            else:
                y = round(edge * height)
                draw.line([(start, y), (min(end, width), y)], fill=(255, 255, 255), width=1)
    for i in range(len(edges) - 1):
        mid = (edges[i] + edges[i + 1]) / 2
        at = (round(mid * width) - 12, 4) if axis == "x" else (4, round(mid * height) - 6)
        draw.text(at, _text(font, f"tile {i + 1}"), fill=(255, 255, 255), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0))  # fmt: skip


def render(
    image: Image.Image, heat: torch.Tensor, label: str, bands: tuple[str, Sequence[tuple[float, float]]] | None = None
) -> Image.Image:
    """``heat`` [rows, cols] in [0, 1] (see :func:`normalise`) over ``image``, with a legend strip
    below: the label, and a colour bar from 0 to the max shared by all units of the generation.
    An all-zero ``heat`` gives the image dimmed, the label and "no influence". ``bands`` (a tiled
    unit's axis and tile bands) draws where each tile's band lies."""
    base = image.convert("RGB")
    width, height = base.size
    heat = heat.detach().float().cpu().nan_to_num(0.0).clamp(0.0, 1.0)
    pixels = torch.from_numpy(np.asarray(base, dtype=np.float32).copy())
    blank = not bool(heat.any())
    if blank:
        blended = pixels * BLANK_DIM
    else:
        up = F.interpolate(heat[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        up = up.clamp_(0.0, 1.0)
        alpha = (ALPHA_COLD + (ALPHA_HOT - ALPHA_COLD) * up)[..., None]
        blended = pixels * (1 - alpha) + colormap(up) * alpha

    font = _font(max(10, min(width, 1024) // 48))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    _, top, _, bottom = probe.textbbox((0, 0), "Ag0", font=font)
    line, pad = bottom - top + 4, 4
    canvas = Image.new("RGB", (width, height + 2 * line + 2 * pad), (24, 24, 24))
    canvas.paste(Image.fromarray(blended.round_().clamp_(0, 255).to(torch.uint8).numpy()), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if bands is not None and not blank:
        _draw_bands(draw, (width, height), bands[0], bands[1], font)
    y = height + pad
    draw.text((pad, y - top), _text(font, label), fill=(255, 255, 255), font=font)
    y += line
    if blank:
        draw.text((pad, y - top), "no influence", fill=(200, 200, 200), font=font)
        return canvas
    x = pad + draw.textlength("0 ", font=font)
    bar_w = max(8, min(width // 3, 256))
    bar = colormap(torch.linspace(0, 1, bar_w)).round().to(torch.uint8)[None].expand(line - 4, -1, -1)
    draw.text((pad, y - top), "0", fill=(255, 255, 255), font=font)
    canvas.paste(Image.fromarray(bar.contiguous().numpy()), (int(x), y))
    note = f" max  ({SCALE_NOTE})"
    draw.text((int(x) + bar_w, y - top), _text(font, note), fill=(255, 255, 255), font=font)
    return canvas
