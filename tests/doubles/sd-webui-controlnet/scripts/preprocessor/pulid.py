"""Double of ``scripts/preprocessor/pulid.py`` (sd-webui-controlnet 56cec5b2): PuLID's preprocessor
depends on ``facexlib``, ``instant_id_face_embedding`` and ``EVA02-CLIP-L-14-336``; its antelopev2
face embedding is what ``instant_id_face_embedding`` returns for the photo at its default
resolution (512), as a [1, 512] tensor. (The facexlib and EVA-CLIP parts are not insightface's.)"""

from __future__ import annotations

from ..supported_preprocessor import Preprocessor


class PreprocessorPuLID(Preprocessor):
    def __init__(self) -> None:
        super().__init__(name="ip-adapter_pulid")
        self.returns_image = False
        self.preprocessor_deps = ["facexlib", "instant_id_face_embedding", "EVA02-CLIP-L-14-336"]

    def __call__(self, input_image, resolution=512, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        embedding = Preprocessor.get_preprocessor("instant_id_face_embedding")(input_image)
        if embedding.ndim == 1:
            embedding = embedding.unsqueeze(0)
        return embedding


Preprocessor.add_supported_preprocessor(PreprocessorPuLID())
