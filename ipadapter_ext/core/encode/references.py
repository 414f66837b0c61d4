"""Reference images → encoder outputs, through the content-keyed embedding cache.

The uncond ("negative") side may be encoded from images too: a user's negative image, or the
references themselves blended with noise (``noise`` in [0, 1]), which often keeps more of the
reference than zeros do, because CFG then only pushes away from what the noise destroyed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..project.projections import EncodedImages
from .cache import EmbeddingCache, concat_encoded, image_digest
from .encoder import ImageEncoder
from .preprocess import CLIP_MEAN, CLIP_STD, CropMode, pixel_values

#: The noise is seeded, so a negative made with noise is reproducible like the rest of the image.
NOISE_SEED = 0


def add_noise(
    pixels: torch.Tensor,
    noise: float,
    seed: int = NOISE_SEED,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """Normalised pixels blended towards uniform noise: ``(1 − noise)·image + noise·U[0, 1]`` in
    0–1 colour space, then normalised again. ``noise`` 0 returns the pixels unchanged."""
    if noise <= 0:
        return pixels
    mean = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype)
    colour = (pixels * std + mean).clamp(0, 1)
    return ((1 - noise) * colour + noise * uniform - mean) / std


def encode_references(
    encoder: ImageEncoder,
    images: Sequence,
    crop: CropMode | str = CropMode.CENTER,
    cache: EmbeddingCache | None = None,
    noise: float = 0.0,
) -> EncodedImages:
    """Encode each image once per (content, encoder, crop, size, noise); returns the N-image batch."""
    if not images:
        raise ValueError("no reference image given")
    mode = CropMode(crop)
    size = encoder.spec.image_size
    mean, std = encoder.mean, encoder.std
    parts = []
    for image in images:

        def compute(image=image) -> EncodedImages:
            return encoder.encode(add_noise(pixel_values([image], size, mode, mean, std), noise, mean=mean, std=std))

        if cache is None:
            parts.append(compute())
        else:
            key = (image_digest(image), encoder.identity, mode.value, size, float(noise))
            parts.append(cache.get_or_compute(key, compute))
    return concat_encoded(parts)
