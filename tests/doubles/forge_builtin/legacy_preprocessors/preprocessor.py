"""Double of ``extensions-builtin/forge_legacy_preprocessors/legacy_preprocessors/preprocessor.py``
(Forge dfdcbab6): its insightface holder, which differs from sd-webui-controlnet's.

* ``resize_image_with_pad``: as sd-webui-controlnet's (shorter side to ``res``, bicubic up / area
  down, rounded sizes, edge padding to multiples of 64).
* ``InsightFaceModel``: ``.model`` is ``FaceAnalysis(name, CUDA+CPU, root=<models>/insightface)``
  prepared at ctx 0 and 640 × 640, created on first use; antelopev2 is fetched unless
  ``antelopev2_installed`` (here: recorded and failing, as offline).

  - ``run_model``: passes the RGB photo to ``get`` unconverted and returns the first face's
    ``normed_embedding`` as [1, 512].
  - ``run_model_instant_id``: no BGR conversion either; resizes with padding to ``res``, detects,
    and keeps the last face of a stable sort by ``(x2 − x1) · y2 − y1`` (the source's operator
    precedence); returns the keypoint drawing cut to size or the raw embedding. The drawing is
    sd-webui-controlnet's.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import torch

models_path = ""  # modules_forge.shared.models_path: the tests point it at their model folder
download_attempts: list[str] = []


def resize_image_with_pad(img: np.ndarray, res: int):
    h, w = img.shape[:2]
    k = float(res) / float(min(h, w))
    th, tw = int(np.round(float(h) * k)), int(np.round(float(w) * k))
    out = cv2.resize(img, (tw, th), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    out = np.pad(out, [[0, -th % 64], [0, -tw % 64], [0, 0]], mode="edge")
    return np.ascontiguousarray(out), lambda x: np.ascontiguousarray(x[:th, :tw])


def _draw(shape, kps) -> np.ndarray:
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
    kps = np.array(kps)
    board = np.zeros([shape[0], shape[1], 3])
    for first, second in ((0, 2), (1, 2), (3, 2), (4, 2)):
        x, y = kps[[first, second]][:, 0], kps[[first, second]][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        poly = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        board = cv2.fillConvexPoly(board.copy(), poly, colours[first])
    board = (board * 0.6).astype(np.uint8)
    for (x, y), colour in zip(kps, colours, strict=False):
        board = cv2.circle(board.copy(), (int(x), int(y)), 10, colour, -1)
    return board


class InsightFaceModel:
    def __init__(self, face_analysis_model_name: str = "buffalo_l") -> None:
        self.model = None
        self.face_analysis_model_name = face_analysis_model_name
        self.antelopev2_installed = False

    def install_antelopev2(self) -> None:
        folder = os.path.join(models_path, "insightface", "models", "antelopev2")
        for name in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
            if not os.path.exists(os.path.join(folder, name)):
                download_attempts.append(name)
                raise ConnectionError(f"no network: cannot download {name}")
        self.antelopev2_installed = True

    def load_model(self) -> None:
        if self.model is None:
            from insightface.app import FaceAnalysis

            self.model = FaceAnalysis(
                name=self.face_analysis_model_name,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                root=os.path.join(models_path, "insightface"),
            )
            self.model.prepare(ctx_id=0, det_size=(640, 640))

    def run_model(self, img: np.ndarray, **kwargs):
        self.load_model()
        faces = self.model.get(img)
        if not faces:
            raise Exception("Insightface: No face found in image.")
        return torch.from_numpy(faces[0].normed_embedding).unsqueeze(0), False

    def run_model_instant_id(self, img: np.ndarray, res: int = 512, return_keypoints: bool = False, **kwargs):
        if not self.antelopev2_installed:
            self.install_antelopev2()
        self.load_model()
        img, remove_pad = resize_image_with_pad(img, res)
        faces = self.model.get(img)
        if not faces:
            raise Exception("Insightface: No face found in image.")
        face = sorted(faces, key=lambda f: (f["bbox"][2] - f["bbox"][0]) * f["bbox"][3] - f["bbox"][1])[-1]
        if return_keypoints:
            return remove_pad(_draw(img.shape, face["kps"])), True
        return torch.from_numpy(face["embedding"]), False


g_insight_face_model = InsightFaceModel()
g_insight_face_instant_id_model = InsightFaceModel(face_analysis_model_name="antelopev2")
