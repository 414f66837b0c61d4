"""SCRFD face detection: letterboxed input, per-stride anchor decoding, non-maximum suppression.

The behaviour is insightface's ``SCRFD``/``RetinaFace`` class as ``FaceAnalysis`` runs it, so the
boxes and landmarks (and, downstream, the aligned crops and embeddings) are the same numbers:

- the image is resized (aspect kept) into the top-left of a black ``det_size`` canvas;
- pixels become (p − 127.5) / 128, channels in RGB order (insightface reads BGR and swaps);
- each stride s (8, 16, 32; 16 and 32… for five-level models) predicts, for every cell and
  anchor, a score, four distances to the box sides and ten landmark offsets, in units of s,
  from the cell's top-left corner (x·s, y·s);
- candidates scoring ≥ ``det_thresh`` are sorted by score, suppressed at IoU > ``nms_thresh``
  (areas with the +1 pixel convention), and scaled back to the image.

Outputs are (N, k) per stride, or (1, N, k) for models exported with a batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FaceModelError
from .imaging import resize_linear

INPUT_MEAN = 127.5
INPUT_STD = 128.0


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, best score first: boxes (N, 4) x1 y1 x2 y2, scores (N,), kps (N, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    kps: np.ndarray | None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _layout(n_outputs: int) -> tuple[tuple[int, ...], int, bool]:
    """(strides, anchors per cell, has landmarks) from the number of outputs."""
    if n_outputs in (6, 9):
        return (8, 16, 32), 2, n_outputs == 9
    if n_outputs in (10, 15):
        return (8, 16, 32, 64, 128), 1, n_outputs == 15
    raise FaceModelError(
        f"The face detector has {n_outputs} outputs; an SCRFD detector has 6, 9, 10 or 15. "
        "Use det_10g.onnx from insightface's buffalo_l pack."
    )


def letterbox(image: np.ndarray, det_size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """``image`` resized to fit ``det_size`` = (width, height), on a black canvas at the top left,
    and the scale from image to canvas pixels."""
    h, w = image.shape[:2]
    det_w, det_h = det_size
    if h / w > det_h / det_w:
        new_h = det_h
        new_w = int(new_h / (h / w))
    else:
        new_w = det_w
        new_h = int(new_w * (h / w))
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    canvas = np.zeros((det_h, det_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resize_linear(image, (new_w, new_h))
    return canvas, new_h / h


def to_blob(canvas: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) float32 network input from an RGB uint8 canvas."""
    pixels = canvas.astype(np.float32)
    blob = (pixels - np.float32(INPUT_MEAN)) * np.float32(1.0 / INPUT_STD)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])


def anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(height·width·anchors, 2) x, y of each cell's corner in input pixels, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centres, anchors, axis=0) if anchors > 1 else centres


def boxes_from_distances(centres: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """x1 y1 x2 y2 from distances to the left, top, right and bottom sides."""
    return np.stack(
        [
            centres[:, 0] - dist[:, 0],
            centres[:, 1] - dist[:, 1],
            centres[:, 0] + dist[:, 2],
            centres[:, 1] + dist[:, 3],
        ],
        axis=-1,
    )


def points_from_offsets(centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(N, K, 2) landmarks from (N, 2K) x/y offsets."""
    n = offsets.shape[0]
    return (offsets.reshape(n, -1, 2) + centres[:, None, :]).astype(offsets.dtype)


def nms(boxes_scores: np.ndarray, thresh: float) -> list[int]:
    """Indices kept by greedy suppression of rows (x1, y1, x2, y2, score), highest score first."""
    x1, y1, x2, y2, scores = (boxes_scores[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = iw * ih
        overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= thresh]
    return keep


class ScrfdDetector:
    """One SCRFD model in an onnxruntime session."""

    def __init__(self, session: Any, det_thresh: float = 0.5, nms_thresh: float = 0.4) -> None:
        self.session = session
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        # A model exported at a fixed size only runs at that size.
        self.fixed_size = (
            (shape[3], shape[2]) if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) else None
        )
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.strides, self.anchors, self.has_kps = _layout(len(outputs))
        self.batched = len(outputs[0].shape) == 3

    def _per_stride(self, outs: list[np.ndarray], idx: int) -> np.ndarray:
        out = outs[idx]
        return out[0] if self.batched else out

    def detect(self, image: np.ndarray, det_size: tuple[int, int] = (640, 640)) -> Detections:
        """Faces in an RGB uint8 ``image``, with the detector run at ``det_size`` (width, height)."""
        size = self.fixed_size or tuple(det_size)
        canvas, scale = letterbox(image, size)
        blob = to_blob(canvas)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        height, width = blob.shape[2:]
        levels = len(self.strides)
        scores_l, boxes_l, kps_l = [], [], []
        for i, stride in enumerate(self.strides):
            scores = self._per_stride(outs, i)
            dist = self._per_stride(outs, i + levels) * stride
            centres = anchor_centres(height // stride, width // stride, stride, self.anchors)
            keep = np.where(scores >= self.det_thresh)[0]
            scores_l.append(scores[keep])
            boxes_l.append(boxes_from_distances(centres, dist)[keep])
            if self.has_kps:
                offsets = self._per_stride(outs, i + 2 * levels) * stride
                kps_l.append(points_from_offsets(centres, offsets)[keep])
        scores = np.vstack(scores_l)
        order = scores.ravel().argsort()[::-1]
        candidates = np.hstack((np.vstack(boxes_l) / scale, scores)).astype(np.float32, copy=False)[order]
        keep = nms(candidates, self.nms_thresh)
        kept = candidates[keep]
        kps = None
        if self.has_kps:
            kps = (np.vstack(kps_l) / scale)[order][keep]
        return Detections(boxes=kept[:, :4], scores=kept[:, 4], kps=kps)
