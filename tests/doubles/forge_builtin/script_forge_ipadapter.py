"""Double of ``extensions-builtin/sd_forge_ipadapter/scripts/forge_ipadapter.py`` (Forge dfdcbab6),
a script executed at start and at every UI reload: it registers ``InsightFace+CLIP-H (IPAdapter)``
(FaceID: buffalo_l) and ``InsightFace (InstantID)`` (antelopev2), each keeping the loaded
insightface object in ``cached_insightface`` (``load_insightface`` loads it through the module's
``opInsightFaceLoader`` only while that is None) and returning a conditioning dict holding it and
the photo as a [1, H, W, 3] tensor in 0…1; ``CLIP-ViT-H (IPAdapter)`` stands for the entries
without insightface."""

import numpy as np
import torch
from lib_ipadapter.IPAdapterPlus import InsightFaceLoader
from modules_forge.shared import add_supported_preprocessor

opInsightFaceLoader = InsightFaceLoader().load_insight_face


def numpy_to_pytorch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x[None].astype(np.float32) / 255.0))


class PreprocessorClipVisionForIPAdapter:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tags = ["IP-Adapter"]

    def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        return {"clip_vision": "clip", "image": numpy_to_pytorch(input_image)}


class PreprocessorClipVisionWithInsightFaceForIPAdapter(PreprocessorClipVisionForIPAdapter):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.cached_insightface = None

    def load_insightface(self):
        if self.cached_insightface is None:
            self.cached_insightface = opInsightFaceLoader()[0]
        return self.cached_insightface

    def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        return {"clip_vision": "clip", "insightface": self.load_insightface(), "image": numpy_to_pytorch(input_image)}


class PreprocessorInsightFaceForInstantID:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tags = ["Instant-ID"]
        self.cached_insightface = None

    def load_insightface(self):
        if self.cached_insightface is None:
            self.cached_insightface = opInsightFaceLoader(name="antelopev2")[0]
        return self.cached_insightface

    def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        return {
            "clip_vision": None,
            "insightface": self.load_insightface(),
            "image": numpy_to_pytorch(input_image),
            "instant_id": True,
        }


add_supported_preprocessor(PreprocessorClipVisionForIPAdapter("CLIP-ViT-H (IPAdapter)"))
add_supported_preprocessor(PreprocessorClipVisionWithInsightFaceForIPAdapter("InsightFace+CLIP-H (IPAdapter)"))
add_supported_preprocessor(PreprocessorInsightFaceForInstantID("InsightFace (InstantID)"))
