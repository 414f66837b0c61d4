"""A bounded LRU of image embeddings, keyed by image content.

Re-encoding the same reference for every generation (and again for the hires pass) is the main
avoidable cost of other integrations. The key is a hash of the pixels plus everything that changes
the embedding (encoder identity, crop mode, input size), so a changed file or setting never
returns a stale entry. Entries are kept on the CPU.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch
from PIL import Image

from ..project.projections import EncodedImages
from .preprocess import to_rgb_image


def image_digest(image) -> str:
    """Content hash of an image (after RGB conversion), independent of its file or object."""
    rgb: Image.Image = to_rgb_image(image)
    h = hashlib.sha256()
    h.update(f"{rgb.size[0]}x{rgb.size[1]}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """``get_or_compute(key, fn)`` with least-recently-used eviction past ``max_items``."""

    def __init__(self, max_items: int = 32) -> None:
        self.max_items = max(0, int(max_items))
        self._items: OrderedDict[tuple, EncodedImages] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def resize(self, max_items: int) -> None:
        self.max_items = max(0, int(max_items))
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get_or_compute(self, key: tuple, compute: Callable[[], EncodedImages]) -> EncodedImages:
        hit = self._items.get(key)
        if hit is not None:
            self.hits += 1
            self._items.move_to_end(key)
            return hit
        self.misses += 1
        value = compute()
        if self.max_items:
            self._items[key] = value.map(lambda t: t.detach().to("cpu"))
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value


def concat_encoded(parts: list[EncodedImages]) -> EncodedImages:
    """Stack per-image encodings into one batch, field by field."""
    fields = {}
    for name in ("image_embeds", "hidden", "face", "last_hidden"):
        values = [getattr(p, name) for p in parts]
        fields[name] = None if any(v is None for v in values) else torch.cat(values, dim=0)
    return EncodedImages(**fields)
