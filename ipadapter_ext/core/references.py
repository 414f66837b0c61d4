"""Reference images → encoder outputs, through the content-keyed embedding cache."""

from __future__ import annotations

from collections.abc import Sequence

from .cache import EmbeddingCache, concat_encoded, image_digest
from .encoder import ClipVisionEncoder
from .preprocess import CropMode, pixel_values
from .projections import EncodedImages


def encode_references(
    encoder: ClipVisionEncoder,
    images: Sequence,
    crop: CropMode | str = CropMode.CENTER,
    cache: EmbeddingCache | None = None,
) -> EncodedImages:
    """Encode each image once per (content, encoder, crop, size); returns the N-image batch."""
    if not images:
        raise ValueError("no reference image given")
    mode = CropMode(crop)
    size = encoder.spec.image_size
    parts = []
    for image in images:

        def compute(image=image) -> EncodedImages:
            return encoder.encode(pixel_values([image], size, mode))

        if cache is None:
            parts.append(compute())
        else:
            key = (image_digest(image), encoder.identity, mode.value, size)
            parts.append(cache.get_or_compute(key, compute))
    return concat_encoded(parts)
