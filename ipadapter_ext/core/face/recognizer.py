"""ArcFace: an aligned face crop → its identity embedding (512 numbers for w600k_r50).

FaceID adapters were trained on these embeddings, L2-normalised (``normed_embedding``) for the
FaceID / Plus / PlusV2 models, raw for the portrait-unnorm and InstantID ones, so both are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import FaceModelError


class ArcFaceRecognizer:
    """One ArcFace model in an onnxruntime session; ``mean``/``std`` normalise input pixels."""

    def __init__(self, session: Any, mean: float = 127.5, std: float = 127.5) -> None:
        self.session = session
        self.mean = float(mean)
        self.std = float(std)
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        side = shape[2] if len(shape) == 4 else None
        if not isinstance(side, int) or shape[3] != side:
            raise FaceModelError(
                f"The face recogniser's input has shape {shape}; ArcFace takes square images "
                "(1, 3, 112, 112). Use w600k_r50.onnx from insightface's buffalo_l pack."
            )
        self.input_size = side
        self.output_name = session.get_outputs()[0].name

    def to_blob(self, crops: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 from (N, S, S, 3) RGB uint8 crops."""
        pixels = crops.astype(np.float32)
        blob = (pixels - np.float32(self.mean)) * np.float32(1.0 / self.std)
        return np.ascontiguousarray(blob.transpose(0, 3, 1, 2))

    def embed(self, crop: np.ndarray) -> np.ndarray:
        """Embedding (D,) float32 of one aligned RGB uint8 crop of ``input_size`` pixels."""
        crop = np.asarray(crop)
        if crop.shape != (self.input_size, self.input_size, 3):
            raise ValueError(f"expected a ({self.input_size}, {self.input_size}, 3) crop, got {crop.shape}")
        out = self.session.run([self.output_name], {self.input_name: self.to_blob(crop[None])})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


def l2_normalise(embedding: np.ndarray) -> np.ndarray:
    """``embedding`` divided by its Euclidean norm (a zero vector stays zero)."""
    norm = np.linalg.norm(embedding)
    return embedding / norm if norm > 0 else embedding.copy()
