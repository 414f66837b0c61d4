"""Reference photos → the face each one shows, for the FaceID adapters.

Detection and recognition run once per distinct photo (content-keyed, bounded LRU), so a face is
not re-detected for the hires pass, the next generation with the same reference, or the encode
route. The face analysis itself (:mod:`..face`) loads the ONNX pack lazily; nothing here runs
unless a FaceID adapter is used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import IPAdapterError
from ..face import DEFAULT_PACK, Face, FaceAnalyser, NoFaceError, SessionCache, align, find_pack
from .cache import image_digest

#: The aligned crop FaceID-Plus feeds to CLIP (the original repository's ``norm_crop`` size).
CLIP_CROP = 224


@dataclass(frozen=True)
class FoundFace:
    """The largest face of one reference and the aligned crop of it."""

    face: Face
    crop: Image.Image  # CLIP_CROP px, aligned on the five keypoints

    def embedding(self, normalised: bool) -> torch.Tensor:
        value = self.face.normed_embedding if normalised else self.face.embedding
        return torch.from_numpy(np.asarray(value, dtype=np.float32))


class FaceReferences:
    """Finds faces with the pack found under ``roots()`` (read each time, so a pack added while
    the WebUI runs is picked up); owns the ONNX sessions and the per-photo results."""

    def __init__(
        self,
        roots: Callable[[], Sequence[Path]],
        pack_name: Callable[[], str] = lambda: DEFAULT_PACK,
        max_items: int = 32,
    ) -> None:
        self.roots = roots
        self.pack_name = pack_name
        self.max_items = max_items
        self.sessions = SessionCache()
        self._found: OrderedDict[tuple, FoundFace] = OrderedDict()
        #: Detection runs under it: the ONNX sessions are created once and the table stays whole
        #: when a route and a generation look for faces at the same time.
        self.lock = threading.RLock()

    def analyser(self, pack: str | None = None, **kwargs) -> FaceAnalyser:
        """An analyser for ``pack`` (default: the pack chosen in the settings), sharing the sessions."""
        name = pack or self.pack_name() or DEFAULT_PACK
        return FaceAnalyser(find_pack(list(self.roots()), name), sessions=self.sessions, **kwargs)

    def clear(self) -> int:
        """Forget the found faces and the loaded face models; returns how many faces were held."""
        with self.lock:
            count = len(self._found)
            self._found.clear()
            self.sessions.clear()
            return count

    def resize(self, max_items: int) -> None:
        with self.lock:
            self.max_items = max(0, int(max_items))
            while len(self._found) > self.max_items:
                self._found.popitem(last=False)

    def report(self) -> dict:
        with self.lock:
            crops = sum(len(f.crop.tobytes()) for f in self._found.values())
            return {
                "entries": len(self._found),
                "max_entries": self.max_items,
                "bytes": crops,
                "face_models": len(self.sessions),
                "max_face_models": self.sessions.max_items,
                "face_model_loads": self.sessions.loads,
            }

    def find(self, image, where: str, pack: str | None = None) -> FoundFace:
        """The largest face in ``image``; ``where`` ("IP-Adapter unit 2, image 3") prefixes errors;
        ``pack`` overrides the chosen pack (InstantID was trained on antelopev2's embeddings)."""
        with self.lock:
            return self._find(image, where, pack)

    def _find(self, image, where: str, pack: str | None = None) -> FoundFace:
        analyser = self.analyser(pack)
        models = (analyser.pack.detector.path, analyser.pack.recognizer.path)
        key = (image_digest(image), *((str(m), m.stat().st_mtime_ns) for m in models))
        hit = self._found.get(key)
        if hit is not None:
            self._found.move_to_end(key)
            return hit
        try:
            face = analyser.largest(image)
        except NoFaceError as exc:
            raise NoFaceError(f"{where}: {exc}") from exc
        found = FoundFace(face, align(image, face.kps, CLIP_CROP))
        if self.max_items:
            self._found[key] = found
        while len(self._found) > self.max_items:
            self._found.popitem(last=False)
        return found

    def find_all(self, images: Sequence, where: str, pack: str | None = None) -> list[FoundFace]:
        if not images:
            raise IPAdapterError(f"{where}: no reference photo. Drop a photo of a face into the unit.")
        return [self.find(image, f"{where}, image {i}", pack) for i, image in enumerate(images, start=1)]


def preview(image, found: FoundFace, height: int = 256) -> Image.Image:
    """What the adapter saw: the reference scaled to ``height`` with the detected box and five
    keypoints drawn, and the aligned crop beside it."""
    from PIL import ImageDraw

    source = (
        image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)).convert("RGB")
    )
    scale = height / source.height
    shown = source.resize((max(1, round(source.width * scale)), height), Image.BICUBIC)
    draw = ImageDraw.Draw(shown)
    x1, y1, x2, y2 = (float(v) * scale for v in found.face.box)
    draw.rectangle((x1, y1, x2, y2), outline=(0, 255, 0), width=2)
    for x, y in np.asarray(found.face.kps, dtype=np.float32) * scale:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 0, 0))
    crop = found.crop.resize((height, height), Image.BICUBIC)
    out = Image.new("RGB", (shown.width + height, height))
    out.paste(shown, (0, 0))
    out.paste(crop, (shown.width, 0))
    return out
