"""A bounded LRU of image embeddings, keyed by image content.

Re-encoding the same reference for every generation (and again for the hires pass) is the main
avoidable cost of other integrations. The key is a hash of the pixels plus everything that changes
the embedding (encoder identity, crop mode, input size), so a changed file or setting never
returns a stale entry. Entries are kept on the CPU.
"""

from __future__ import annotations

import hashlib
import threading
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
    """``get_or_compute(key, fn)`` with least-recently-used eviction past ``max_items``.

    Shared by generations and the HTTP routes (other threads), so the table is only touched under
    a lock; the encoding itself runs outside it."""

    def __init__(self, max_items: int = 32) -> None:
        self.max_items = max(0, int(max_items))
        self._items: OrderedDict[tuple, EncodedImages] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            return count

    def resize(self, max_items: int) -> None:
        with self._lock:
            self.max_items = max(0, int(max_items))
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get_or_compute(self, key: tuple, compute: Callable[[], EncodedImages]) -> EncodedImages:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self.hits += 1
                self._items.move_to_end(key)
                return hit
            self.misses += 1
        value = compute()
        if self.max_items:
            kept = value.map(lambda t: t.detach().to("cpu"))
            with self._lock:
                self._items[key] = kept
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return value

    def report(self) -> dict:
        with self._lock:
            values = list(self._items.values())
            report = {"entries": len(values), "max_entries": self.max_items, "hits": self.hits, "misses": self.misses}
        report["bytes"] = sum(
            t.numel() * t.element_size() for v in values for t in (v.image_embeds, v.hidden, v.face) if t is not None
        )
        return report


def concat_encoded(parts: list[EncodedImages]) -> EncodedImages:
    """Stack per-image encodings into one batch, field by field."""
    fields = {}
    for name in ("image_embeds", "hidden", "face", "last_hidden"):
        values = [getattr(p, name) for p in parts]
        fields[name] = None if any(v is None for v in values) else torch.cat(values, dim=0)
    return EncodedImages(**fields)
