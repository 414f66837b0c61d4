"""Reference images → RGB uint8 arrays, the one pixel format the face code works on."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .errors import FaceInputError


def to_rgb_array(image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image (any mode) or an RGB/RGBA/grey uint8 array.

    Arrays are taken as RGB (the WebUI's convention), never BGR; alpha is dropped, as PIL's RGB
    conversion does.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise FaceInputError(f"Face analysis expects 8-bit pixels (uint8), got an array of {arr.dtype}.")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise FaceInputError(f"Face analysis expects an (H, W, 3) RGB image, got an array of shape {arr.shape}.")
    if min(arr.shape[:2]) < 1:
        raise FaceInputError("Face analysis got an empty image.")
    return np.ascontiguousarray(arr[:, :, :3])
