"""``FaceAnalyser``: detect faces (retrying when a face fills the frame), align, embed.

insightface's ``FaceAnalysis`` runs the detector once at 640 pixels. A face that fills the
photo (a tight portrait crop, the usual FaceID reference) is then larger than the detector's
biggest anchors and is often missed. Two retries, tried in order until a face is found
(``retry_schedule``):

1. the detector input shrinks from ``det_size`` in steps of 64 down to 320 (as ComfyUI's
   IPAdapter nodes do), so the face covers fewer detector pixels;
2. the image is placed on a black canvas with a border of ``pad_fraction`` of its longer side on
   every side, so a face cut off at the edges gets surroundings; boxes and landmarks are shifted
   back into the image's coordinates.

The first attempt alone is exactly insightface's ``FaceAnalysis.get``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .align import align, align_array
from .detector import Detections, ScrfdDetector
from .errors import FaceModelError, NoFaceError
from .images import to_rgb_array
from .pack import FacePack
from .recognizer import ArcFaceRecognizer, l2_normalise
from .runtime import SessionCache

__all__ = ["DetectAttempt", "Face", "FaceAnalyser", "align", "retry_schedule"]


@dataclass(frozen=True)
class DetectAttempt:
    """One detector run: input size (square) and border added around the image (pixels per side
    = ``pad_fraction`` × the image's longer side)."""

    det_size: int
    pad_fraction: float = 0.0


def retry_schedule(det_size: int = 640, min_size: int = 320, step: int = 64, pad_fraction: float = 0.5):
    """Attempts in order: ``det_size``, then smaller by ``step`` down to ``min_size``, then padded."""
    sizes = [det_size]
    size = det_size - step
    while step > 0 and size >= min_size:
        sizes.append(size)
        size -= step
    attempts = [DetectAttempt(s) for s in sizes]
    if pad_fraction > 0:
        attempts.append(DetectAttempt(det_size, pad_fraction))
    return tuple(attempts)


@dataclass
class Face:
    """A detected face in the analysed image's pixel coordinates.

    ``box`` (4,) x1 y1 x2 y2, ``kps`` (5, 2) eyes, nose, mouth corners (image left/right order
    as the detector gives them), ``embedding`` the recogniser's raw output (None until embedded),
    ``attempt`` the detector run that found it.
    """

    box: np.ndarray
    score: float
    kps: np.ndarray
    attempt: DetectAttempt
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))

    @property
    def normed_embedding(self) -> np.ndarray | None:
        """The embedding scaled to unit length, what the FaceID adapters take."""
        return None if self.embedding is None else l2_normalise(self.embedding)


NO_FACE_MESSAGE = (
    "No face was found in the image. Use a photo where one face is clearly visible: facing the "
    "camera, not cut off by the image border, not tiny, not covered, and well lit."
)


class FaceAnalyser:
    """Face detection and embedding with an insightface model pack (``find_pack``).

    ``sessions`` is the engine's ``SessionCache`` (a private one when omitted); ``retry`` False
    runs the single insightface-equal attempt at ``det_size``.
    """

    def __init__(
        self,
        pack: FacePack,
        det_size: int = 640,
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
        sessions: SessionCache | None = None,
        retry: bool = True,
    ) -> None:
        self.pack = pack
        self.sessions = sessions if sessions is not None else SessionCache()
        self.detector = ScrfdDetector(self.sessions.get(pack.detector.path), det_thresh, nms_thresh)
        if not self.detector.has_kps:
            raise FaceModelError(
                f"The face detector {pack.detector.path.name} finds no facial landmarks, which face alignment "
                "needs. Use det_10g.onnx from insightface's buffalo_l pack."
            )
        mean, std = pack.recognizer_normalisation
        self.recognizer = ArcFaceRecognizer(self.sessions.get(pack.recognizer.path), mean, std)
        self.attempts = retry_schedule(det_size) if retry else (DetectAttempt(det_size),)

    def _run(self, rgb: np.ndarray, attempt: DetectAttempt) -> list[Face]:
        pad = round(attempt.pad_fraction * max(rgb.shape[:2])) if attempt.pad_fraction > 0 else 0
        image = rgb
        if pad:
            image = np.zeros((rgb.shape[0] + 2 * pad, rgb.shape[1] + 2 * pad, 3), dtype=np.uint8)
            image[pad : pad + rgb.shape[0], pad : pad + rgb.shape[1]] = rgb
        found: Detections = self.detector.detect(image, (attempt.det_size, attempt.det_size))
        faces = []
        for i in range(len(found)):
            box = found.boxes[i].copy()
            kps = found.kps[i].copy()
            if pad:
                box -= np.float32(pad)
                kps -= np.float32(pad)
            faces.append(Face(box=box, score=float(found.scores[i]), kps=kps, attempt=attempt))
        return faces

    def find(self, image) -> list[Face]:
        """All faces found by the first attempt that finds any, best score first; not embedded."""
        rgb = to_rgb_array(image)
        for attempt in self.attempts:
            faces = self._run(rgb, attempt)
            if faces:
                return faces
        return []

    def embed(self, image, face: Face) -> Face:
        """``face`` with its ``embedding`` set, from the aligned crop of ``image``."""
        crop = align_array(to_rgb_array(image), face.kps, self.recognizer.input_size)
        face.embedding = self.recognizer.embed(crop)
        return face

    def detect(self, image) -> list[Face]:
        """All faces (see ``find``), each embedded."""
        rgb = to_rgb_array(image)
        return [self.embed(rgb, f) for f in self.find(rgb)]

    def largest(self, image) -> Face:
        """The embedded face with the largest box; ``NoFaceError`` if there is none."""
        rgb = to_rgb_array(image)
        faces = self.find(rgb)
        if not faces:
            raise NoFaceError(NO_FACE_MESSAGE)
        best = max(faces, key=lambda f: f.area)  # the first of equal areas, i.e. the better score
        return self.embed(rgb, best)


def analyser_for(roots: list[Path], name: str = "buffalo_l", **kwargs) -> FaceAnalyser:
    """``FaceAnalyser(find_pack(roots, name), **kwargs)``: the one call a host needs."""
    from .pack import find_pack

    return FaceAnalyser(find_pack(roots, name), **kwargs)
