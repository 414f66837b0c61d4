"""Tiled references: a non-square reference as square tiles along its long side, each with a band.

A centre crop drops the sides of a wide reference (or the top and bottom of a tall one), the
complaint users raise most about image prompts. The ``tiles`` crop mode keeps all of it: the short
side is resized to the encoder's input size (as the centre crop does), and the long side is
covered by ``ceil(ratio)`` square tiles spread evenly from one end to the other, overlapping as
needed. Each tile is encoded on its own and applied as its own token group, under a band of the
output: the part of the output's width (wide references) or height (tall ones) that the tile
covers in the reference, stretched to the output as masks are.

Where two tiles overlap, their bands cross-fade linearly, so at every point of the output the
bands add up to exactly 1: the whole output gets the unit's weight once, as with one image.

A reference within :data:`SQUARE_TOLERANCE` of square is one tile, which is exactly the centre
crop. Past :data:`MAX_TILES` tiles, the middle ``MAX_TILES : 1`` part is used (said in the
infotext and on the console).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from PIL import Image

from ..attend.masks import RegionMask, token_grid

#: At most this many tiles per reference (a 4:1 panorama); longer ones are cropped to 4:1.
MAX_TILES = 4
#: Ratios up to 1 + this are one tile (a centre crop that loses at most this share of the long side).
SQUARE_TOLERANCE = 0.05
#: Band-mask grids remembered per unit.
MAX_GRIDS = 16


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one reference lie in it, after its short side was resized to ``size``.

    ``boxes`` are (left, top, right, bottom) in the resized image; ``axis`` is "x" when they run
    left to right, "y" top to bottom, "" for a single tile; ``span`` is the part of the long side
    they cover (all of it unless the reference was longer than :data:`MAX_TILES` tiles)."""

    size: int
    resized: tuple[int, int]  # (width, height) after the short side went to ``size``
    axis: str
    boxes: tuple[tuple[int, int, int, int], ...]
    span: tuple[int, int]  # (start, end) along the long side

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def cropped(self) -> bool:
        long = self.resized[0] if self.axis == "x" else self.resized[1]
        return self.axis != "" and (self.span[1] - self.span[0]) < long

    def bands(self) -> tuple[tuple[float, float], ...]:
        """Each tile's (start, end) along the axis, as fractions of the covered span."""
        start, end = self.span
        index = 0 if self.axis == "x" else 1
        return tuple(((b[index] - start) / (end - start), (b[index + 2] - start) / (end - start)) for b in self.boxes)

    def describe(self) -> str:
        """For the infotext and the console: '3 across', '2 down', '4 across (middle 4:1)'."""
        if self.count == 1:
            return "1"
        text = f"{self.count} {'across' if self.axis == 'x' else 'down'}"
        return f"{text} (middle {MAX_TILES}:1)" if self.cropped else text


def tile_count(width: int, height: int) -> int:
    """How many tiles a ``width``×``height`` reference gets: one per started square along the long
    side, with :data:`SQUARE_TOLERANCE` of slack, at most :data:`MAX_TILES`."""
    ratio = max(width, height) / min(width, height)
    return max(1, min(MAX_TILES, math.ceil(ratio - SQUARE_TOLERANCE)))


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The shortest-edge resize of ``CLIPImageProcessor`` (long side truncated), as the centre crop."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def plan_tiles(width: int, height: int, size: int = 224) -> Tiling:
    """The tiling of a ``width``×``height`` reference for an encoder input of ``size``."""
    rw, rh = resized_size(width, height, size)
    n = tile_count(width, height)
    wide = rw > rh
    long = rw if wide else rh
    if n == 1:  # the centre crop, with its rounding
        left, top = (rw - size) // 2, (rh - size) // 2
        return Tiling(size, (rw, rh), "", ((left, top, left + size, top + size),), (0, long))
    used = min(long, n * size)
    first = (long - used) // 2
    step = (used - size) / (n - 1)
    starts = [first + round(i * step) for i in range(n)]
    boxes = tuple((s, 0, s + size, size) if wide else (0, s, size, s + size) for s in starts)
    return Tiling(size, (rw, rh), "x" if wide else "y", boxes, (first, first + used))


def cut_tiles(image: Image.Image, tiling: Tiling, resample: int = Image.BICUBIC) -> list[Image.Image]:
    """The tiles of ``image`` (any mode; masks use the same boxes), each ``size``×``size``."""
    resized = image if image.size == tiling.resized else image.resize(tiling.resized, resample=resample)
    return [resized.crop(box) for box in tiling.boxes]


def band_weights(bands: tuple[tuple[float, float], ...], positions: torch.Tensor) -> torch.Tensor:
    """[G, len(positions)]: each band's share at each position (fractions along the axis).

    Inside one band only, the share is 1; where bands overlap, each is weighted by how far the
    position lies inside it from the edge it shares with its neighbour, then normalised, which is a
    linear cross-fade; the outer edges of the first and last band do not fade."""
    last = len(bands) - 1
    rows = []
    for g, (a, b) in enumerate(bands):
        from_start = positions - a if g > 0 else torch.full_like(positions, math.inf)
        to_end = b - positions if g < last else torch.full_like(positions, math.inf)
        depth = torch.minimum(from_start, to_end)
        inside = (positions >= a - 1e-9) & (positions <= b + 1e-9)
        rows.append(torch.where(inside, depth.clamp(min=0.0).clamp(max=1.0) + 1e-6, torch.zeros_like(positions)))
    weights = torch.stack(rows)
    return weights / weights.sum(dim=0, keepdim=True).clamp_min(1e-12)


class BandMasks:
    """A tiled unit's band per tile on each layer's token grid ([G, N]), times its region mask."""

    def __init__(self, tiling: Tiling, region: RegionMask | None = None) -> None:
        if tiling.count < 2:
            raise ValueError("band masks need at least two tiles")
        self.tiling = tiling
        self.region = region
        self._grids: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def groups(self) -> int:
        return self.tiling.count

    def grid(self, rows: int, cols: int) -> torch.Tensor:
        """[G, rows, cols] in float32: band shares at the token centres, times the region mask."""
        along = cols if self.tiling.axis == "x" else rows
        positions = (torch.arange(along, dtype=torch.float64) + 0.5) / along
        shares = band_weights(self.tiling.bands(), positions).float()
        if self.tiling.axis == "x":
            grid = shares[:, None, :].expand(-1, rows, -1)
        else:
            grid = shares[:, :, None].expand(-1, -1, cols)
        if self.region is not None:
            grid = grid * self.region.grid(rows, cols)[None]
        return grid.contiguous()

    def for_layer(
        self, tokens: int, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        key = (tokens, latent_hw, device, dtype)
        hit = self._grids.get(key)
        if hit is not None:
            return hit
        rows, cols = token_grid(tokens, latent_hw)
        value = self.grid(rows, cols).reshape(self.groups, tokens).to(device=device, dtype=dtype)
        self._grids[key] = value
        while len(self._grids) > MAX_GRIDS:
            self._grids.popitem(last=False)
        return value
