"""Double of ``scripts/preprocessor/legacy/processor.py`` (sd-webui-controlnet 56cec5b2): its
insightface users, in behaviour.

* ``resize_image_with_pad(img, res)``: scales so that the shorter side is ``res`` (OpenCV bicubic
  when that enlarges, area averaging otherwise; target sizes rounded to the nearest integer), pads
  bottom and right by repeating edge pixels up to multiples of 64, and returns the padded image
  with a function that cuts an image of the padded size back to the scaled size.
* ``InsightFaceModel``: holds ``insightface.app.FaceAnalysis`` in ``.model``, created on first use
  with the pack name, CUDA then CPU providers and ``<annotator models_path>/insightface`` as
  root, prepared with ctx 0 and a 640 × 640 detector. ``install_antelopev2`` fetches the five
  antelopev2 files that are missing (here: records them and fails, as offline) and sets
  ``antelopev2_installed``.

  - ``run_model`` (FaceID): drops alpha, converts RGB to BGR, picks the face with the largest box
    (a stable sort by area, so the last of equal ones), returns its ``normed_embedding`` as a
    [1, 512] tensor and ``False`` (not an image).
  - ``run_model_instant_id``: installs antelopev2 unless marked installed, loads, converts RGB to
    BGR, resizes with padding to ``res``, detects, picks the largest face, and returns either the
    keypoint drawing cut back to size (``True``) or the raw ``embedding`` tensor (``False``).
  - the keypoint drawing: a black float canvas of the padded size; for the limbs (0, 2), (1, 2),
    (3, 2), (4, 2), in the colour of the limb's first point, an ellipse polygon
    (``cv2.ellipse2Poly``) centred on the truncated mean of the two points, half-axes the
    truncated half length and 4, the truncated angle in degrees of the vector from the second
    point to the first, 0–360 in steps of 1, filled with ``cv2.fillConvexPoly``; the canvas times
    0.6 cast to uint8; then a filled circle of radius 10 at each truncated point in its colour.
    Colours: red, green, blue, yellow, magenta.
* ``face_id_plus``: the FaceID embedding plus a CLIP encoding of the photo (here a marker: CLIP
  is not insightface's).
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch

ANTELOPE_FILES = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx")
#: What ``install_antelopev2`` would have downloaded (the tests assert nothing is).
download_attempts: list[str] = []


def resize_image_with_pad(img: np.ndarray, res: int):
    h, w = img.shape[:2]
    scale = float(res) / float(min(h, w))
    new_h, new_w = int(np.round(float(h) * scale)), int(np.round(float(w) * scale))
    how = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    scaled = cv2.resize(img, (new_w, new_h), interpolation=how)
    pad_h = int(np.ceil(new_h / 64.0) * 64 - new_h)
    pad_w = int(np.ceil(new_w / 64.0) * 64 - new_w)
    padded = np.pad(scaled, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(x):
        return np.ascontiguousarray(x[:new_h, :new_w].copy())

    return np.ascontiguousarray(padded.copy()), remove_pad


def _draw_keypoints(shape, kps) -> np.ndarray:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    points = np.array(kps)
    canvas = np.zeros([shape[0], shape[1], 3])
    for a, b in ((0, 2), (1, 2), (3, 2), (4, 2)):
        pair = points[[a, b]]
        dx, dy = pair[0, 0] - pair[1, 0], pair[0, 1] - pair[1, 1]
        half = (dx**2 + dy**2) ** 0.5 / 2
        degrees = int(math.degrees(math.atan2(dy, dx)))
        centre = (int(np.mean(pair[:, 0])), int(np.mean(pair[:, 1])))
        poly = cv2.ellipse2Poly(centre, (int(half), 4), degrees, 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), poly, colours[a])
    out = (canvas * 0.6).astype(np.uint8)
    for i, (x, y) in enumerate(points):
        out = cv2.circle(out.copy(), (int(x), int(y)), 10, colours[i], -1)
    return out.astype(np.uint8)


class InsightFaceModel:
    def __init__(self, face_analysis_model_name: str = "buffalo_l") -> None:
        self.model = None
        self.face_analysis_model_name = face_analysis_model_name
        self.antelopev2_installed = False

    @staticmethod
    def pick_largest_face(faces):
        if not faces:
            raise Exception("Insightface: No face found in image.")
        return sorted(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))[-1]

    def install_antelopev2(self) -> None:
        from annotator.annotator_path import models_path

        folder = os.path.join(models_path, "insightface", "models", "antelopev2")
        for name in ANTELOPE_FILES:
            if not os.path.exists(os.path.join(folder, name)):
                download_attempts.append(name)
                raise ConnectionError(f"no network: cannot download {name}")
        self.antelopev2_installed = True

    def load_model(self) -> None:
        if self.model is None:
            from annotator.annotator_path import models_path
            from insightface.app import FaceAnalysis

            self.model = FaceAnalysis(
                name=self.face_analysis_model_name,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                root=os.path.join(models_path, "insightface"),
            )
            self.model.prepare(ctx_id=0, det_size=(640, 640))

    def run_model(self, img: np.ndarray, **kwargs):
        self.load_model()
        bgr = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
        face = self.pick_largest_face(self.model.get(bgr))
        return torch.from_numpy(face.normed_embedding).unsqueeze(0), False

    def run_model_instant_id(self, img: np.ndarray, res: int = 512, return_keypoints: bool = False, **kwargs):
        if not self.antelopev2_installed:
            self.install_antelopev2()
        self.load_model()
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        padded, remove_pad = resize_image_with_pad(bgr, res)
        face = self.pick_largest_face(self.model.get(padded))
        if return_keypoints:
            return remove_pad(_draw_keypoints(padded.shape, face["kps"])), True
        return torch.from_numpy(face["embedding"]), False


g_insight_face_model = InsightFaceModel()
g_insight_face_instant_id_model = InsightFaceModel(face_analysis_model_name="antelopev2")


def clip(img, config="clip_h", low_vram=False, **kwargs):
    return ("clip", config, img.shape), False


def face_id_plus(img, low_vram=False, **kwargs):
    face_embed, _ = g_insight_face_model.run_model(img)
    clip_embed, _ = clip(img, config="clip_h", low_vram=low_vram)
    return {"face_embed": face_embed, "clip_embed": clip_embed}, False
