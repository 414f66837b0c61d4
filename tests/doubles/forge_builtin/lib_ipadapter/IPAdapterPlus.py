"""Double of ``extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py`` (Forge
dfdcbab6): the insightface loader and the face part of ``IPAdapterApply.apply_ipadapter``.

* ``insightface_face_align``: a module global, None until ``InsightFaceLoader.load_insight_face``
  sets it to ``insightface.utils.face_align``.
* ``InsightFaceLoader.load_insight_face(name="buffalo_l", provider="CPU")``: imports insightface
  (an ImportError becomes a plain Exception), fetches antelopev2's missing files for that pack
  (here: recorded and failing, as offline), and returns ``(FaceAnalysis(name, root=<models>/
  insightface, providers=[provider + "ExecutionProvider"]),)`` prepared at ctx 0 and 640 × 640.
* ``face_inputs`` (the face branch of ``apply_ipadapter``): the photos, a [B, H, W, 3] float
  tensor in 0…1, become uint8 arrays with the channels reversed (``tensorToNP``); for each, the
  detector size is set on ``insightface.det_model.input_size`` to 640, 576, … 192 until ``get``
  finds a face, and the first face is taken: InstantID keeps its raw ``embedding``; FaceID its
  ``normed_embedding`` and ``face_align.norm_crop(photo, landmark=kps, image_size=224)``; no face
  at any size raises.
"""

from __future__ import annotations

import os

import numpy as np
import torch

INSIGHTFACE_DIR = ""  # os.path.join(models_path, "insightface"): the tests point it at their folder
insightface_face_align = None
download_attempts: list[str] = []


class InsightFaceLoader:
    def load_insight_face(self, name="buffalo_l", provider="CPU"):
        try:
            from insightface.app import FaceAnalysis
        except ImportError as e:
            raise Exception(e) from e
        if name == "antelopev2":
            folder = os.path.join(INSIGHTFACE_DIR, "models", "antelopev2")
            for file in ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"):
                if not os.path.exists(os.path.join(folder, file)):
                    download_attempts.append(file)
                    raise ConnectionError(f"no network: cannot download {file}")
        from insightface.utils import face_align

        global insightface_face_align
        insightface_face_align = face_align
        model = FaceAnalysis(name=name, root=INSIGHTFACE_DIR, providers=[provider + "ExecutionProvider"])
        model.prepare(ctx_id=0, det_size=(640, 640))
        return (model,)


def tensor_to_np(image: torch.Tensor) -> np.ndarray:
    return torch.clamp(255.0 * image.detach().cpu(), 0, 255).to(torch.uint8)[..., [2, 1, 0]].numpy()


def np_to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.clamp(torch.from_numpy(image).to(torch.float) / 255.0, 0.0, 1.0)[..., [2, 1, 0]]


def face_inputs(insightface, image: torch.Tensor, instant_id: bool):
    """(face embeddings [B, 1, 512], aligned crops [B, 224, 224, 3] or None)."""
    photos = tensor_to_np(image)
    embeds, crops = [], []
    for i in range(photos.shape[0]):
        for size in range(640, 128, -64):
            insightface.det_model.input_size = (size, size)
            faces = insightface.get(photos[i])
            if faces:
                if instant_id:
                    embeds.append(torch.from_numpy(faces[0].embedding).unsqueeze(0))
                else:
                    embeds.append(torch.from_numpy(faces[0].normed_embedding).unsqueeze(0))
                    crop = insightface_face_align.norm_crop(photos[i], landmark=faces[0].kps, image_size=224)
                    crops.append(np_to_tensor(crop))
                break
        else:
            raise Exception("InsightFace: No face detected.")
    return torch.stack(embeds), (torch.stack(crops) if crops else None)
