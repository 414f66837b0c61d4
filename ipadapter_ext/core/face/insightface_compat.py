"""insightface's ``FaceAnalysis`` interface over our face analysis, for code written against insightface.

sd-webui-controlnet and Forge's built-in ControlNet/IP-Adapter call insightface through very few
members: ``FaceAnalysis(name=pack).get(bgr_image)`` returning faces with ``bbox``, ``kps``,
``det_score``, ``embedding`` and ``normed_embedding`` (read as keys or attributes), Forge's
``det_model.input_size`` (it steps the detector size down itself) and
``insightface.utils.face_align.norm_crop`` (FaceID-Plus crops). :class:`InsightFaceApp` and
:data:`FACE_ALIGN` offer exactly those, computed by :mod:`.detector`, :mod:`.recognizer` and
:mod:`.align`, so that their code, unchanged, runs without the insightface package.

The numbers are insightface's: one detector run at ``det_model.input_size`` (no retries: their
code decides what to do when no face is found), the image read as BGR as insightface reads it,
faces in detector order (best score first), the embedding of the ``norm_crop`` of each face.
The pack is looked up at each ``get`` (cheap: graph headers only; sessions are cached), so a pack
copied in while the WebUI runs is found, and a missing one raises ``FaceModelMissingError``
naming the folder and the two files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .align import align_array
from .analyser import FaceAnalyser
from .errors import FaceInputError
from .recognizer import l2_normalise

#: insightface's ``FaceAnalysis.prepare`` defaults, which every caller we serve keeps.
DET_SIZE = (640, 640)
DET_THRESH = 0.5


class CompatFace(dict):
    """insightface's ``Face``: a dict whose keys read as attributes too (missing ones as None)."""

    def __getattr__(self, name: str) -> Any:
        return self.get(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    @property
    def embedding_norm(self) -> float | None:
        return None if self.get("embedding") is None else np.linalg.norm(self["embedding"])

    @property
    def normed_embedding(self) -> np.ndarray | None:
        return None if self.get("embedding") is None else l2_normalise(self["embedding"])


class DetectorSettings:
    """What callers set on insightface's ``FaceAnalysis.det_model``: the detector input size
    (width, height), which Forge lowers step by step when no face is found."""

    def __init__(self, input_size: tuple[int, int] = DET_SIZE, det_thresh: float = DET_THRESH) -> None:
        self.input_size = tuple(input_size)
        self.det_thresh = det_thresh


def select_faces(boxes: np.ndarray, image_shape: tuple[int, ...], max_num: int) -> np.ndarray:
    """Indices of the ``max_num`` faces insightface keeps for ``get(img, max_num)``: the largest
    boxes, penalised by twice their squared distance from the image centre."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centre_y, centre_x = image_shape[0] // 2, image_shape[1] // 2
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - centre_x
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - centre_y
    values = area - (np.power(dx, 2.0) + np.power(dy, 2.0)) * 2.0
    return np.argsort(values)[::-1][:max_num]


def bgr_to_rgb(image: Any) -> np.ndarray:
    """The RGB uint8 array of an insightface input (an (H, W, 3) uint8 array read as BGR)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise FaceInputError(
            f"Face analysis expects an (H, W, 3) uint8 image, got an array of shape {arr.shape} and type {arr.dtype}."
        )
    return np.ascontiguousarray(arr[:, :, ::-1])


class InsightFaceApp:
    """Stands in for ``insightface.app.FaceAnalysis(name=pack_name)`` prepared at 640 × 640.

    ``analyser(pack_name, det_thresh=…)`` builds a :class:`FaceAnalyser` for the pack (the host
    finds the pack and shares its session cache); only its detector and recogniser are used.
    """

    def __init__(self, pack_name: str, analyser: Callable[..., FaceAnalyser]) -> None:
        self.name = pack_name
        self._analyser = analyser
        self.det_model = DetectorSettings()

    def prepare(self, ctx_id: int = 0, det_thresh: float = DET_THRESH, det_size: tuple[int, int] = DET_SIZE) -> None:
        """insightface's ``prepare``: the detector's threshold and input size (the device is ours to pick)."""
        self.det_model = DetectorSettings(det_size, det_thresh)

    def get(self, img: Any, max_num: int = 0) -> list[CompatFace]:
        """The faces in ``img`` (BGR uint8), best detector score first, each embedded."""
        rgb = bgr_to_rgb(img)
        analyser = self._analyser(self.name, det_thresh=float(self.det_model.det_thresh))
        found = analyser.detector.detect(rgb, tuple(int(v) for v in self.det_model.input_size))
        order = np.arange(len(found))
        if max_num > 0 and len(found) > max_num:
            order = select_faces(found.boxes, rgb.shape, max_num)
        faces = []
        for i in order:
            kps = found.kps[i]
            crop = align_array(rgb, kps, analyser.recognizer.input_size)
            faces.append(
                CompatFace(
                    bbox=found.boxes[i],
                    kps=kps,
                    det_score=found.scores[i],
                    embedding=analyser.recognizer.embed(crop),
                )
            )
        return faces


class FaceAlign:
    """``insightface.utils.face_align`` for the one call hosts make: ``norm_crop``."""

    @staticmethod
    def norm_crop(img: Any, landmark: np.ndarray, image_size: int = 112, mode: str = "arcface") -> np.ndarray:
        """The aligned ``image_size`` crop of ``img`` (any channel order: each channel is warped alike)."""
        if mode != "arcface":
            raise FaceInputError(f"Only ArcFace alignment ('arcface') is available, not '{mode}'.")
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise FaceInputError(f"Face alignment expects an (H, W, C) uint8 image, got shape {arr.shape}.")
        return align_array(arr, np.asarray(landmark), image_size)


FACE_ALIGN = FaceAlign()
