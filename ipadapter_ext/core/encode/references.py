"""Reference images → encoder outputs, through the content-keyed embedding cache.

A reference becomes one or more *views* (224-px squares): one for the crop modes, one per tile for
``tiles``. On the way it may be sharpened (contrast-adaptive, as ComfyUI offers it) and masked by
a *reference mask*: what the mask excludes is blanked to the CLIP mean colour (zero in the
normalised pixels) before encoding, as ComfyUI's encoder mask does, so "use only this part of the
reference" holds whatever the crop. Each view is its own encoder call, cached by content and by
everything that changes it.

The uncond ("negative") side may be encoded from images too: a user's negative image, or the
references themselves degraded by a noise type (:mod:`.noise`), which often keeps more of the
reference than zeros do, because CFG then only pushes away from what the noise destroyed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import IPAdapterError
from ..project.projections import EncodedImages
from .cache import EmbeddingCache, concat_encoded, image_digest
from .encoder import ImageEncoder
from .noise import LEGACY_SEED, NoiseType, degrade, stream_seed
from .preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOUR,
    CropMode,
    colour_of,
    colour_values,
    fit_square,
    normalise,
    normalise_colour,
    pad_colour,
    to_rgb_image,
)
from .sharpen import sharpen
from .tiles import Tiling, cut_tiles, plan_tiles

#: The original ``noise`` type's seed (fixed, so that earlier results reproduce).
NOISE_SEED = LEGACY_SEED


@dataclass(frozen=True)
class ReferenceView:
    """How a reference is turned into encoder input: crop mode, sharpening, reference mask
    (mode "L", white = keep; stretched to each reference's size)."""

    crop: CropMode = CropMode.CENTER
    sharpening: float = 0.0
    mask: Image.Image | None = None

    @property
    def mask_digest(self) -> str:
        if self.mask is None:
            return ""
        return hashlib.sha256(f"{self.mask.size}".encode() + self.mask.tobytes()).hexdigest()

    def key(self) -> tuple:
        return (CropMode(self.crop).value, float(self.sharpening), self.mask_digest)


@dataclass(frozen=True)
class NoiseSpec:
    """The uncond image's noise: type, strength, blur and the seed it is drawn from."""

    kind: NoiseType = NoiseType.NOISE
    strength: float = 0.0
    blur: int = 0
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.strength > 0 or self.blur > 0

    @property
    def stream(self) -> int:
        """The generator seed: fixed for the original ``noise`` type, else from the generation's seed."""
        kind = NoiseType(self.kind)
        return LEGACY_SEED if kind is NoiseType.NOISE else stream_seed(self.seed, kind)

    def key(self) -> tuple:
        if not self.active:
            return ()
        return (NoiseType(self.kind).value, float(self.strength), int(self.blur), self.stream)


def add_noise(
    pixels: torch.Tensor,
    noise: float,
    seed: int = NOISE_SEED,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Normalised pixels blended towards uniform noise: ``(1 − noise)·image + noise·U[0, 1]`` in
    0–1 colour space, then normalised again. ``noise`` 0 returns the pixels unchanged."""
    return degrade_pixels(pixels, NoiseSpec(NoiseType.NOISE, noise), seed, mean, std)


def degrade_pixels(
    pixels: torch.Tensor,
    spec: NoiseSpec,
    stream: int | None = None,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Normalised pixels [N, 3, H, W] (the encoder's ``mean``/``std``) with the noise of ``spec``
    (nothing when it is inactive)."""
    if not spec.active:
        return pixels
    seed = spec.stream if stream is None else stream
    colour = degrade(colour_of(pixels, mean, std), spec.kind, spec.strength, spec.blur, seed)
    return normalise_colour(colour, mean, std)


def mask_values(mask: Image.Image) -> torch.Tensor:
    """A view of the reference mask (mode "L") → [1, H, W] float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def _views(
    image, size: int, view: ReferenceView, pad: tuple[int, ...] = PAD_COLOUR
) -> tuple[list[Image.Image], list[Image.Image | None], Tiling | None]:
    """The squares the encoder sees of ``image``, the matching squares of the reference mask, and
    the tiling (``None`` for the single-view crops; a one-tile tiling is the centre crop); ``pad``
    is the letterbox colour of the ``pad`` crop (the encoder's mean colour)."""
    rgb = to_rgb_image(image)
    mask = None if view.mask is None else view.mask.convert("L").resize(rgb.size, resample=Image.BILINEAR)
    crop = CropMode(view.crop)
    if crop is CropMode.TILES:
        tiling = plan_tiles(*rgb.size, size)
        if tiling.count > 1:
            masks = cut_tiles(mask, tiling, Image.BILINEAR) if mask is not None else [None] * tiling.count
            return cut_tiles(rgb, tiling), masks, tiling
        crop = CropMode.CENTER  # one tile is exactly the centre crop
        squares, masks, tiling_out = [fit_square(rgb, size, crop, pad)], [None], tiling
    else:
        squares, masks, tiling_out = [fit_square(rgb, size, crop, pad)], [None], None
    if mask is not None:
        masks = [fit_square(mask, size, crop)]
    return squares, masks, tiling_out


def _pixels(
    square: Image.Image,
    mask: Image.Image | None,
    view: ReferenceView,
    noise: NoiseSpec,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """[1, 3, S, S] normalised with the encoder's ``mean``/``std``: sharpened, noised (uncond
    only), then masked (a masked-out pixel is 0, the encoder's mean colour)."""
    if view.sharpening > 0:
        pixels = normalise_colour(sharpen(colour_values(square), view.sharpening), mean, std)[None]
    else:
        pixels = normalise(square, mean, std)[None]
    pixels = degrade_pixels(pixels, noise, None, mean, std)
    if mask is not None:
        pixels = pixels * mask_values(mask)
    return pixels


def encode_views(
    encoder: ImageEncoder,
    image,
    view: ReferenceView | None = None,
    cache: EmbeddingCache | None = None,
    noise: NoiseSpec | None = None,
) -> tuple[EncodedImages, Tiling | None]:
    """One reference → its views' encoder outputs ([V, …]: one row per view, one encoder call each,
    cached) and its tiling (``None`` unless ``view.crop`` is ``tiles``)."""
    view, noise = view or ReferenceView(), noise or NoiseSpec()
    size = encoder.spec.image_size
    mean, std = encoder.mean, encoder.std
    squares, masks, tiling = _views(image, size, view, pad_colour(mean))
    if view.mask is not None and all(m is not None and not np.asarray(m).any() for m in masks):
        raise IPAdapterError(
            "the reference mask hides everything the crop keeps of the reference, so the encoder would see a blank "
            "image. Paint white over the part to use (inside the crop), or change the crop mode."
        )
    digest = image_digest(image)
    parts = []
    for index, (square, mask) in enumerate(zip(squares, masks, strict=True)):

        def compute(square=square, mask=mask) -> EncodedImages:
            return encoder.encode(_pixels(square, mask, view, noise, mean, std))

        if cache is None:
            parts.append(compute())
        else:
            key = (digest, encoder.identity, *view.key(), size, index, len(squares), *noise.key())
            parts.append(cache.get_or_compute(key, compute))
    return concat_encoded(parts), tiling


def encode_references(
    encoder: ImageEncoder,
    images: Sequence,
    crop: CropMode | str = CropMode.CENTER,
    cache: EmbeddingCache | None = None,
    noise: float | NoiseSpec = 0.0,
    *,
    view: ReferenceView | None = None,
) -> EncodedImages:
    """Encode each image once per (content, encoder, view, size, noise); returns the N-image batch.
    Single-view crops only (``tiles`` gives several views per image: :func:`encode_tiled`)."""
    if not images:
        raise ValueError("no reference image given")
    view = view or ReferenceView(CropMode(crop))
    if CropMode(view.crop) is CropMode.TILES:
        view = ReferenceView(CropMode.CENTER, view.sharpening, view.mask)
    spec = noise if isinstance(noise, NoiseSpec) else NoiseSpec(NoiseType.NOISE, float(noise))
    return concat_encoded([encode_views(encoder, image, view, cache, spec)[0] for image in images])


def encode_tiled(
    encoder: ImageEncoder,
    images: Sequence,
    view: ReferenceView,
    cache: EmbeddingCache | None = None,
    noise: NoiseSpec | None = None,
) -> tuple[list[EncodedImages], Tiling]:
    """Tiled references: per tile g, the encoder outputs of tile g of every image ([N, …] each),
    and the first image's tiling. Every image must give the same tiles (count and direction)."""
    if not images:
        raise ValueError("no reference image given")
    per_image = [encode_views(encoder, image, view, cache, noise) for image in images]
    tilings = [t for _, t in per_image]
    first = tilings[0]
    assert first is not None
    if any(t is None or (t.count, t.axis) != (first.count, first.axis) for t in tilings):
        found = ", ".join(t.describe() if t is not None else "?" for t in tilings)
        raise IPAdapterError(
            f"with the 'tiles' crop every reference image must give the same tiles, but they give {found}. "
            "Use references of similar shape, or another crop mode."
        )
    groups = [
        concat_encoded([enc.map(lambda t, g=g: t[g : g + 1]) for enc, _ in per_image]) for g in range(first.count)
    ]
    return groups, first
