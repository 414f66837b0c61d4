"""What a server offers, read before the run: models that fit its checkpoint, the unit's choices,
FaceID models whose face analysis finds the synthetic faces, checkpoints and our settings."""

from __future__ import annotations

from typing import Any

from .client import Http
from .payloads import FACE_KINDS, Catalog, References, plain

CHOICE_FIELDS = ("weight_type", "weight_mode", "crop", "combine")


def _resolve(schema: dict, node: dict) -> dict:
    """Follow ``$ref``/``allOf`` to the definition (pydantic 1 ``definitions``, 2 ``$defs``)."""
    while True:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            node = (schema.get("definitions") or schema.get("$defs") or {}).get(name, {})
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node


def choices(schema: dict) -> dict[str, list[str]]:
    out = {}
    for name in CHOICE_FIELDS:
        node = _resolve(schema, schema.get("properties", {}).get(name, {}))
        if node.get("enum"):
            out[name] = [str(v) for v in node["enum"]]
    return out


def _need(http: Http, method: str, path: str, body: Any = None) -> Any:
    answer = http.call(method, path, body)
    if answer.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {answer.status}: {answer.detail[:500]}")
    return answer.body


def discover(http: Http, refs: References, size: int, steps: int, settings: tuple[str, ...],
             second: str | None = None) -> Catalog:  # fmt: skip
    models = _need(http, "GET", "/ipadapter/v1/models?refresh=true")["models"]
    if models and all(m["compatible"] is None for m in models):  # Forge loads the checkpoint lazily
        _need(http, "POST", "/sdapi/v1/txt2img", plain(size, 1, "soak warm-up"))
        models = _need(http, "GET", "/ipadapter/v1/models?refresh=true")["models"]
    fitting = {m["name"]: m for m in models if m["compatible"] is True and m.get("base") != "flux"}
    if not [m for m in fitting.values() if m.get("kind") not in FACE_KINDS]:
        names = [(m["name"], m["compatible"], m["reason"] or m["error"]) for m in models]
        raise RuntimeError(f"no IP-Adapter model with a CLIP encoder fits the loaded checkpoint: {names}")
    catalog = Catalog(fitting, choices(_need(http, "GET", "/ipadapter/v1/schema")))
    face_models = [name for name, m in fitting.items() if m.get("kind") in FACE_KINDS]
    if face_models:
        found = [photo for photo in refs.faces if _has_face(http, photo)]
        if found:
            refs.faces = found
            catalog.face_models = face_models
        for name in face_models if not found else ():
            del catalog.models[name]
    options = _need(http, "GET", "/sdapi/v1/options")
    catalog.settings = {key: options[key] for key in settings if key in options}
    current = options.get("sd_model_checkpoint")
    if second is None:
        listed = _need(http, "GET", "/sdapi/v1/sd-models")
        others = [m["title"] for m in listed if current not in (m["title"], m["model_name"], m.get("filename"))]
        second = others[0] if others else None
    catalog.checkpoints = (current, second)
    return catalog


def _has_face(http: Http, photo: str) -> bool:
    answer = http.post("/ipadapter/v1/faces", {"image": photo})
    return answer.status == 200 and bool(answer.body.get("faces"))
