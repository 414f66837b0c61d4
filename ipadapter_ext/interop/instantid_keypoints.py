"""InstantID's face keypoint image, computed the way ControlNet's ``instant_id_face_keypoints`` does.

The IdentityNet ControlNet of InstantID is conditioned on a drawing of the five face keypoints.
API users who send that image to a ControlNet unit themselves (preprocessor "none") need the
exact image the preprocessor would make, so every step is the preprocessor's:

1. the photo is resized so its shorter side is ``resolution`` (OpenCV's bicubic when enlarging,
   area averaging when shrinking, the size rounded) and padded by repeating its edge pixels up to
   multiples of 64;
2. antelopev2's detector runs once at 640 × 640 on the padded photo, read as BGR, and the face
   with the largest box is taken (the last of equal ones);
3. on a black canvas of the padded size, the four limbs from the nose to the eyes and mouth
   corners are drawn as filled ellipses of half-width 4 in the colour of their outer point, the
   canvas is dimmed to 0.6 (truncated to integers), five filled discs of radius 10 are drawn on
   the points, and the padding is cut off.

OpenCV draws and resizes, as in ControlNet, so the pixels are the same; every WebUI ships it
(A1111's ``modules/processing.py`` imports it), and nothing else of this extension needs it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..core.errors import IPAdapterError
from ..core.face.analyser import NO_FACE_MESSAGE
from ..core.face.errors import NoFaceError

#: Point order: left eye, right eye, nose, left and right mouth corner (as the detector gives them).
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # each limb ends at the nose; coloured by its first point
LIMB_HALF_WIDTH = 4
LIMB_SHADE = 0.6
DOT_RADIUS = 10
PAD_MULTIPLE = 64


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise IPAdapterError(
            "the InstantID keypoint image is drawn with OpenCV (the cv2 module), which every WebUI ships but "
            f"this Python lacks ({exc}). Install opencv-python-headless into this environment."
        ) from exc
    return cv2


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(``image`` resized to a shorter side of ``resolution`` and edge-padded to multiples of 64,
    (height, width) before padding)."""
    cv2 = _cv2()
    height, width = image.shape[:2]
    k = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(float(height) * k)), int(np.round(float(width) * k))
    method = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA
    resized = cv2.resize(image, (target_w, target_h), interpolation=method)
    pad_h = -target_h % PAD_MULTIPLE
    pad_w = -target_w % PAD_MULTIPLE
    padded = np.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), (target_h, target_w)


def draw_keypoints(height: int, width: int, kps: np.ndarray) -> np.ndarray:
    """The (height, width, 3) uint8 keypoint drawing for five (x, y) points (see the module docstring)."""
    cv2 = _cv2()
    points = np.asarray(kps)
    canvas = np.zeros((height, width, 3))  # float64, as the limbs are dimmed afterwards
    for start, end in LIMBS:
        xs, ys = points[[start, end], 0], points[[start, end], 1]
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        centre = (int(np.mean(xs)), int(np.mean(ys)))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas, polygon, COLOURS[start])
    image = (canvas * LIMB_SHADE).astype(np.uint8)
    for (x, y), colour in zip(points, COLOURS, strict=False):
        image = cv2.circle(image, (int(x), int(y)), DOT_RADIUS, colour, -1)
    return image


def largest_face(faces: list) -> Any:
    """The face with the largest box; of equal ones the last, as a stable sort's last element."""
    best = None
    for face in faces:
        box = face["bbox"]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if best is None or area >= best[0]:
            best = (area, face)
    if best is None:
        raise NoFaceError(NO_FACE_MESSAGE)
    return best[1]


def keypoint_image(app: Any, rgb: np.ndarray, resolution: int = 512) -> np.ndarray:
    """The keypoint image of the largest face in ``rgb`` (H, W, 3 uint8) with ``app``, an
    insightface-style analyser of the antelopev2 pack; ``NoFaceError`` when none is found."""
    bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    padded, (height, width) = resize_with_pad(bgr, resolution)
    face = largest_face(app.get(padded))
    drawing = draw_keypoints(padded.shape[0], padded.shape[1], face["kps"])
    return np.ascontiguousarray(drawing[:height, :width])
