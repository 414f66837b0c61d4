"""``POST /ipadapter/v1/faces``: what the face analysis finds in a photo, before generating.

FaceID users' most common failure is a face that is not found, or the wrong one of several; this
route shows the boxes, scores, keypoints and the aligned crop the adapter would see, with the same
pack, retries and errors as a generation.

With ``keypoints_image: true`` it also returns InstantID's keypoint image, the exact picture
ControlNet's ``instant_id_face_keypoints`` makes at ``keypoints_resolution`` (antelopev2 pack), so
an API client can send it to an IdentityNet ControlNet unit with the preprocessor "none".
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from ..core.engine import Engine
from ..core.errors import IPAdapterError
from ..unit_inputs import decode_image

CROP_SIZES = (112, 224, 256)
#: ControlNet's default preprocessor resolution, and the range of its resolution slider.
KEYPOINTS_RESOLUTION = 512
KEYPOINTS_RANGE = (64, 2048)


def _png(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _keypoints_options(body: dict) -> int | None:
    """The keypoint image's resolution, or None when it is not asked for."""
    wanted = body.get("keypoints_image", False)
    if not isinstance(wanted, bool):
        raise IPAdapterError(f"faces: keypoints_image must be true or false, not {wanted!r}.")
    resolution = body.get("keypoints_resolution", KEYPOINTS_RESOLUTION)
    low, high = KEYPOINTS_RANGE
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not low <= resolution <= high:
        raise IPAdapterError(
            f"faces: keypoints_resolution must be a whole number from {low} to {high}, not {resolution!r}."
        )
    return resolution if wanted else None


def keypoints_png(engine: Engine, image: Any, resolution: int) -> str:
    """InstantID's keypoint image of ``image`` as base64 PNG (see the module docstring)."""
    import numpy as np
    from PIL import Image

    from ..core.face.errors import NoFaceError
    from ..core.face.insightface_compat import InsightFaceApp
    from ..core.load.adapter_info import FACE_PACK_BY_VARIANT
    from ..interop.instantid_keypoints import keypoint_image

    faces = engine.faces
    app = InsightFaceApp(FACE_PACK_BY_VARIANT["instantid"], lambda name, **kw: faces.analyser(name, retry=False, **kw))
    try:
        drawing = keypoint_image(app, np.asarray(image.convert("RGB")), resolution)
    except NoFaceError as exc:
        raise NoFaceError(
            f"faces: keypoints_image: at resolution {resolution} (as ControlNet's instant_id_face_keypoints "
            f"runs), {exc}"
        ) from exc
    return _png(Image.fromarray(drawing, "RGB"))


def analyse(engine: Engine, body: dict) -> dict[str, Any]:
    """{image, size?, keypoints_image?, keypoints_resolution?} → {faces: [{box, score, kps,
    largest, crop}], size[, keypoints_image, keypoints_resolution]}; raises IPAdapterError."""
    from ..core.face import align

    if not isinstance(body, dict) or not isinstance(body.get("image"), str) or not body["image"]:
        raise IPAdapterError(
            "faces: send {'image': '<base64 PNG/JPEG>'} (optionally 'size': 112, 224 or 256, and "
            "'keypoints_image': true for InstantID's keypoint image)."
        )
    size = body.get("size", 224)
    if size not in CROP_SIZES:
        raise IPAdapterError(f"faces: size must be one of {', '.join(map(str, CROP_SIZES))}, not {size!r}.")
    keypoints = _keypoints_options(body)
    if engine.faces is None:
        raise IPAdapterError("faces: this host offers no face analysis.")
    image = decode_image(body["image"], "faces, image")
    found = engine.faces.analyser().detect(image)
    largest = max(range(len(found)), key=lambda i: found[i].area) if found else None
    faces = [
        {
            "box": [round(float(v), 2) for v in face.box],
            "score": round(float(face.score), 4),
            "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
            "largest": i == largest,
            "crop": _png(align(image, face.kps, size)),
        }
        for i, face in enumerate(found)
    ]
    answer: dict[str, Any] = {"faces": faces, "size": size}
    if keypoints is not None:
        answer["keypoints_image"] = keypoints_png(engine, image, keypoints)
        answer["keypoints_resolution"] = keypoints
    return answer


def faces_endpoint(engine: Callable[[], Engine]) -> Callable[..., dict[str, Any]]:
    from fastapi import Body, HTTPException

    def faces(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008 (fastapi's idiom)
        try:
            return analyse(engine(), body)
        except IPAdapterError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    return faces
