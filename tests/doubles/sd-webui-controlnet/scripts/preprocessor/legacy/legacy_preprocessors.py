"""Double of ``scripts/preprocessor/legacy/legacy_preprocessors.py`` and the insightface entries of
``preprocessor_compiled.py`` (sd-webui-controlnet 56cec5b2).

Each table entry becomes a ``LegacyPreprocessor`` registered under its label, whose call passes
``img``, ``res`` (the resolution) and the two thresholds to the entry's ``call_function`` and
returns the result (HWC3 when it is an image). The insightface entries: ``instant_id_face_embedding``
and ``instant_id_face_keypoints`` (``functools.partial`` of the antelopev2 holder's
``run_model_instant_id`` without / with keypoints), ``ip-adapter_face_id`` (the buffalo_l
holder's bound ``run_model``) and ``ip-adapter_face_id_plus`` (the module function
``face_id_plus``); ``invert`` stands for the many entries that have nothing to do with faces.
"""

from __future__ import annotations

import functools

from ...supported_preprocessor import Preprocessor
from .processor import face_id_plus, g_insight_face_instant_id_model, g_insight_face_model


def invert(img, res=512, **kwargs):
    return 255 - img, True


legacy_preprocessors = {
    "instant_id_face_embedding": {
        "label": "instant_id_face_embedding",
        "call_function": functools.partial(
            g_insight_face_instant_id_model.run_model_instant_id, return_keypoints=False
        ),
        "returns_image": False,
    },
    "instant_id_face_keypoints": {
        "label": "instant_id_face_keypoints",
        "call_function": functools.partial(g_insight_face_instant_id_model.run_model_instant_id, return_keypoints=True),
    },
    "ip-adapter_face_id": {
        "label": "ip-adapter_face_id",
        "call_function": g_insight_face_model.run_model,
        "returns_image": False,
    },
    "ip-adapter_face_id_plus": {
        "label": "ip-adapter_face_id_plus",
        "call_function": face_id_plus,
        "returns_image": False,
    },
    "invert": {"label": "invert (from white bg & black line)", "call_function": invert},
}


class LegacyPreprocessor(Preprocessor):
    def __init__(self, name: str, entry: dict) -> None:
        super().__init__(name, entry["label"])
        self.call_function = entry["call_function"]
        self.returns_image = entry.get("returns_image", True)

    def __call__(self, input_image, resolution=512, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        result, _is_image = self.call_function(
            img=input_image, res=resolution, thr_a=slider_1, thr_b=slider_2, **kwargs
        )
        return result


for _name, _entry in legacy_preprocessors.items():
    Preprocessor.add_supported_preprocessor(LegacyPreprocessor(_name, _entry))
