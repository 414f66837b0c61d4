"""Double of ``legacy_preprocessors/preprocessor_compiled.py`` (Forge dfdcbab6): of the insightface
entries only ``instant_id_face_keypoints`` is active there (the embedding and FaceID ones are
commented out); ``invert`` stands for the entries unrelated to faces."""

import functools

from .preprocessor import g_insight_face_instant_id_model


def invert(img, res=512, **kwargs):
    return 255 - img, True


legacy_preprocessors = {
    "instant_id_face_keypoints": {
        "label": "instant_id_face_keypoints",
        "call_function": functools.partial(g_insight_face_instant_id_model.run_model_instant_id, return_keypoints=True),
    },
    "invert": {"label": "invert (from white bg & black line)", "call_function": invert},
}
