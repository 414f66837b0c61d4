"""Noise types for the uncond image: what the negative side sees instead of a blank image.

The uncond ("negative") tokens of a unit can come from an image (the negative image, else the
references) degraded by noise, so that CFG pushes away from what the noise destroyed and keeps
the rest. The types and their formulas are ComfyUI_IPAdapter_plus's (its "IPAdapter Noise"
node), so a strength carries over, on the 224-px encoder input in [0, 1] colour:

* ``fade``: ``(1 − s)·image + s·U`` (U uniform in [0, 1]);
* ``dissolve``: each value replaced by a uniform one with probability ``s``;
* ``gaussian``: ``image + s·N(0, 1)``;
* ``shuffle``: the image elastically distorted (displacement 75 px, smoothed with σ = 3.5·(1 − s)),
  flipped both ways, then ``image·(1 − n) + n`` with ``n = 0.75·s·N(0, 1)``;

each clamped to [0, 1], then optionally blurred (Gaussian, an odd kernel of ``blur`` pixels, σ
from the kernel size as torchvision chooses it). ``noise`` is this extension's original blend
(the same formula as ``fade``) with its fixed seed, kept so that earlier results reproduce.

The new types draw from the generation's seed (one stream per seed and type), so an image
reproduces from its infotext seed, also when it was one image of a batch.
"""

from __future__ import annotations

import hashlib
from enum import Enum

import torch
import torch.nn.functional as F

#: The original ``noise`` type's seed (fixed: older results reproduce).
LEGACY_SEED = 0
#: ComfyUI's elastic displacement for ``shuffle``, in pixels of the 224-px input.
SHUFFLE_ALPHA = 75.0
MAX_BLUR = 32


class NoiseType(str, Enum):
    NOISE = "noise"
    FADE = "fade"
    DISSOLVE = "dissolve"
    GAUSSIAN = "gaussian"
    SHUFFLE = "shuffle"


def stream_seed(seed: int, kind: NoiseType | str) -> int:
    """A 63-bit seed for ``kind`` at the generation seed ``seed`` (distinct streams per type)."""
    digest = hashlib.sha256(f"ipadapter-noise:{NoiseType(kind).value}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _separable_gaussian(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """[N, C, H, W] convolved with a ``size``-tap Gaussian of ``sigma`` along both axes, reflect-padded."""
    taps = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c, pad = x.shape[1], size // 2
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur(colour: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] blurred with a Gaussian of ``size`` pixels (made odd; at most ``MAX_BLUR``),
    σ = 0.3·((size − 1)/2 − 1) + 0.8 as torchvision picks it for a kernel size."""
    size = min(int(size), MAX_BLUR) | 1 if size > 0 else 0
    if size <= 1:
        return colour
    return _separable_gaussian(colour, size, 0.3 * ((size - 1) * 0.5 - 1) + 0.8)


def _elastic(colour: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth random displacement of up to ~``SHUFFLE_ALPHA`` px, sampled bilinearly."""
    n, _, h, w = colour.shape
    field = torch.rand((n, 2, h, w), generator=generator, dtype=colour.dtype) * 2 - 1
    sigma = (1 - strength) * 3.5
    if sigma > 0:  # the kernel torchvision's ElasticTransform uses for σ
        field = _separable_gaussian(field, int(8 * sigma + 1) | 1, sigma)
    dx = field[:, 0] * SHUFFLE_ALPHA / w
    dy = field[:, 1] * SHUFFLE_ALPHA / h
    ys = torch.linspace(-1, 1, h, dtype=colour.dtype).view(1, h, 1).expand(n, h, w)
    xs = torch.linspace(-1, 1, w, dtype=colour.dtype).view(1, 1, w).expand(n, h, w)
    grid = torch.stack((xs + dx, ys + dy), dim=-1)
    return F.grid_sample(colour, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def degrade(colour: torch.Tensor, kind: NoiseType | str, strength: float, blur_size: int, seed: int) -> torch.Tensor:
    """``colour`` [N, 3, H, W] in [0, 1] with noise of ``kind`` at ``strength`` and ``blur_size``,
    drawn from ``seed`` (the caller's: :func:`stream_seed` for the new types)."""
    kind = NoiseType(kind)
    generator = torch.Generator().manual_seed(int(seed))
    s = float(strength)
    if s > 0:
        if kind in (NoiseType.NOISE, NoiseType.FADE):
            colour = colour * (1 - s) + torch.rand(colour.shape, generator=generator, dtype=colour.dtype) * s
        elif kind is NoiseType.DISSOLVE:
            chosen = (torch.rand(colour.shape, generator=generator, dtype=colour.dtype) < s).to(colour.dtype)
            uniform = torch.rand(colour.shape, generator=generator, dtype=colour.dtype)
            colour = colour * (1 - chosen) + uniform * chosen
        elif kind is NoiseType.GAUSSIAN:
            colour = colour + torch.randn(colour.shape, generator=generator, dtype=colour.dtype) * s
        else:  # shuffle
            colour = _elastic(colour, s, generator).flip(-1).flip(-2)
            n = torch.randn(colour.shape, generator=generator, dtype=colour.dtype) * (s * 0.75)
            colour = colour * (1 - n) + n
        if kind is not NoiseType.NOISE:  # the original blend stays within [0, 1] and was never clamped
            colour = colour.clamp(0.0, 1.0)
    return blur(colour, blur_size)
