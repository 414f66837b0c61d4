"""``POST /ipadapter/v1/faces``: what the face analysis finds in a photo, before generating.

FaceID users' most common failure is a face that is not found, or the wrong one of several; this
route shows the boxes, scores, keypoints and the aligned crop the adapter would see, with the same
pack, retries and errors as a generation.
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


def _png(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def analyse(engine: Engine, body: dict) -> dict[str, Any]:
    """{image, size?} → {faces: [{box, score, kps, largest, crop}], size}; raises IPAdapterError."""
    from ..core.face import align

    if not isinstance(body, dict) or not isinstance(body.get("image"), str) or not body["image"]:
        raise IPAdapterError("faces: send {'image': '<base64 PNG/JPEG>'} (optionally 'size': 112, 224 or 256).")
    size = body.get("size", 224)
    if size not in CROP_SIZES:
        raise IPAdapterError(f"faces: size must be one of {', '.join(map(str, CROP_SIZES))}, not {size!r}.")
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
    return {"faces": faces, "size": size}


def faces_endpoint(engine: Callable[[], Engine]) -> Callable[..., dict[str, Any]]:
    from fastapi import Body, HTTPException

    def faces(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008 (fastapi's idiom)
        try:
            return analyse(engine(), body)
        except IPAdapterError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    return faces
