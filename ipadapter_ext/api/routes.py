"""Read-only HTTP routes: what an API client needs to build a valid IP-Adapter request.

A client calling ``/sdapi/v1/txt2img`` must know the exact model and encoder names, whether a
model fits the loaded checkpoint, and what a unit object looks like; guessing them is how other
integrations end up with "model not found" or a size mismatch mid-generation. These routes answer
from the same registry, compatibility checks and unit model that a generation uses, so what they
list is what a request may name.

Nothing here reveals where the server keeps its files: entries carry file *names* only, and
error texts are scrubbed of the model folders. The routes are plain GETs returning dicts, so they
work under the fastapi/pydantic versions of A1111 (pydantic 1) and Forge (pydantic 2) alike.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..core.encode.embeds import pack_embeds
from ..core.errors import IncompatibleModelError, IPAdapterError
from ..core.load.compat import UNetSignature, check_unet
from ..core.load.registry import AdapterEntry, EncoderEntry, ModelRegistry
from ..schema import PYDANTIC_V2, IPAdapterUnit

if TYPE_CHECKING:  # the routes need no fastapi name at run time; only the caller's app does
    from fastapi import FastAPI

    from ..core.engine import Engine, Placement

PREFIX = "/ipadapter/v1"
IMAGE_DESCRIPTION = "base64 PNG/JPEG/WebP (a data: URL prefix is allowed), or a list of them"
#: Schema keys that give a property a type; a property with none of them accepts anything.
_TYPING_KEYS = ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const", "items", "properties")


def _folder_forms(registry: ModelRegistry) -> list[tuple[str, str]]:
    """(text to find, replacement) for every spelling of a model folder, longest first.

    Exception texts may quote a path as given, resolved, or repr()-escaped (doubled backslashes
    on Windows); each becomes the folder's bare name, so a message still says which folder
    without saying where it lives.
    """
    forms: dict[str, str] = {}
    for folder in (*registry.adapter_dirs, *registry.encoder_dirs, *registry.controlnet_dirs):
        for variant in (folder, folder.absolute(), folder.resolve()):
            text = str(variant)
            if len(text) <= 1:  # "/" or "." would mangle every message
                continue
            for form in (text, variant.as_posix(), text.replace("\\", "\\\\")):
                forms[form] = variant.name or text
    return sorted(forms.items(), key=lambda item: len(item[0]), reverse=True)


def _scrub(text: str | None, forms: Iterable[tuple[str, str]]) -> str | None:
    """``text`` with model-folder paths replaced by folder names; ``None`` stays ``None``."""
    if text is None:
        return None
    for found, replacement in forms:
        text = text.replace(found, replacement)
    return text


def _compatibility(entry: AdapterEntry, unet: UNetSignature | None) -> tuple[bool | None, str | None]:
    """(compatible, reason): ``None`` when nothing is known (no checkpoint, or undetected file)."""
    if entry.info is None or unet is None:
        return None, None
    try:
        check_unet(entry.info, unet, f"'{entry.name}'")
    except IncompatibleModelError as exc:
        return False, str(exc)
    return True, None


def adapter_json(entry: AdapterEntry, unet: UNetSignature | None, forms: Iterable[tuple[str, str]] = ()) -> dict:
    """One adapter as the API lists it. Every key is always present (``null`` when the file was
    not understood), so clients can read fields without checking for them first."""
    info = entry.info
    compatible, reason = _compatibility(entry, unet)
    return {
        "name": entry.name,
        "file": entry.path.name,
        "description": _scrub(entry.description, forms),
        "error": _scrub(entry.error, forms),
        "kind": info.kind.value if info else None,
        "variant": info.variant if info else None,
        "base": info.family if info else None,
        "context_dim": info.context_dim if info else None,
        "layers": info.num_layers if info else None,
        "tokens": info.tokens if info else None,
        "encoder": info.encoder.describe() if info else None,
        "compatible": compatible,
        "reason": _scrub(reason, forms),
    }


def encoder_json(entry: EncoderEntry, forms: Iterable[tuple[str, str]] = ()) -> dict:
    """One CLIP vision encoder as the API lists it; shape fields are ``null`` when undetected."""
    spec = entry.spec
    return {
        "name": entry.name,
        "file": entry.path.name,
        "description": _scrub(entry.description, forms),
        "error": _scrub(entry.error, forms),
        "hidden_size": spec.hidden_size if spec else None,
        "projection_dim": spec.projection_dim if spec else None,
        "image_size": spec.image_size if spec else None,
        "family": spec.family if spec else None,
    }


def unit_schema() -> dict:
    """The JSON schema of one unit, with ``image`` documented.

    ``image`` is typed ``Any`` because the UI passes PIL images and arrays; its generated schema
    therefore says nothing, while API callers can only send base64 strings. The schema is copied
    first: pydantic 1 caches it on the class and hands out the same dict every time.
    """
    schema = copy.deepcopy(IPAdapterUnit.model_json_schema() if PYDANTIC_V2 else IPAdapterUnit.schema())
    image = schema.get("properties", {}).get("image")
    if isinstance(image, dict) and not any(key in image for key in _TYPING_KEYS):
        image["description"] = IMAGE_DESCRIPTION
    return schema


def _route_paths(app: FastAPI) -> set[str]:
    return {path for route in app.routes if isinstance(path := getattr(route, "path", None), str)}


def register_routes(
    app: FastAPI,
    engine: Callable[[], Engine],
    unet_signature: Callable[[], UNetSignature | None],
    placement: Callable[[], Placement] | None = None,
    exclusive: Callable[[], AbstractContextManager] | None = None,
    cleared: Callable[[], None] | None = None,
) -> None:
    """Add the ``/ipadapter/v1/*`` routes to ``app``.

    ``engine`` and ``unet_signature`` are called per request, so the routes always see the
    current registry and the checkpoint loaded right now (``None`` when there is none). The
    WebUI may call its app-started callbacks more than once (e.g. on a UI reload) with the same
    app; a path already present is left alone, so no route is ever added twice.

    The routes that run models (``/encode``, ``/faces``) run inside ``exclusive()``: the host's
    generation queue (the lock the WebUI's own txt2img and interrogate routes take), so they never
    move an encoder or load a model onto the GPU while a generation samples (Forge's memory
    manager, A1111's ``--medvram`` placement), and inside the engine's lock besides. ``cleared``
    runs after ``POST /cache/clear`` (the host frees its own memory, e.g. ``gc`` and the CUDA cache).
    """
    present = _route_paths(app)
    guard = exclusive or contextlib.nullcontext

    def add(path: str, endpoint: Callable[..., dict[str, Any]], summary: str, method: str = "GET") -> None:
        full = PREFIX + path
        if full not in present:
            # response_model=None: the return annotation must not become a pydantic model.
            app.add_api_route(full, endpoint, methods=[method], response_model=None, summary=summary)
            present.add(full)

    def version() -> dict[str, Any]:
        return {"version": __version__}

    def models(refresh: bool = False) -> dict[str, Any]:
        registry = engine().registry
        if refresh:
            registry.refresh()
        unet = unet_signature()
        forms = _folder_forms(registry)
        return {"models": [adapter_json(entry, unet, forms) for entry in registry.adapters()]}

    def encoders(refresh: bool = False) -> dict[str, Any]:
        registry = engine().registry
        if refresh:
            registry.refresh()
        forms = _folder_forms(registry)
        return {"encoders": [encoder_json(entry, forms) for entry in registry.encoders()]}

    def schema() -> dict[str, Any]:
        return unit_schema()

    def cache() -> dict[str, Any]:
        return {"caches": engine().cache_report()}

    def cache_clear() -> dict[str, Any]:
        emptied = engine().clear_caches()
        if cleared is not None:
            cleared()
        return {"cleared": emptied, "caches": engine().cache_report()}

    def models_lock(endpoint: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(endpoint)  # fastapi reads the wrapped signature (the body parameter)
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            with guard(), engine().lock:
                return endpoint(*args, **kwargs)

        return run

    add("/version", version, "Extension version")
    add("/models", models, "IP-Adapter models, with their detected type and fit to the loaded checkpoint")
    add("/encoders", encoders, "CLIP vision encoders, with their detected shapes")
    add("/schema", schema, "JSON schema of one IP-Adapter unit (alwayson_scripts args)")
    add("/cache", cache, "What the caches (models, encodings, faces, K/V) hold now, with their bounds")
    add("/cache/clear", cache_clear, "Empty the caches: loaded models, encodings, faces", "POST")
    if placement is not None:
        add(
            "/encode",
            models_lock(encode_endpoint(engine, placement)),
            "Encode reference images for a model; the result goes in a unit's embeds",
            "POST",
        )
    from .faces import faces_endpoint

    add(
        "/faces",
        models_lock(faces_endpoint(engine)),
        "Faces found in a photo: boxes, scores, keypoints, aligned crops",
        "POST",
    )


#: The unit fields that decide the tokens (the rest act at sampling time and stay in the unit).
ENCODE_FIELDS = (
    "image", "model", "encoder", "crop", "combine", "image_weights", "negative_image", "noise", "faceid_v2_weight",
    "noise_type", "noise_blur", "reference_mask", "sharpening",
)  # fmt: skip


def encode_endpoint(engine: Callable[[], Engine], placement: Callable[[], Placement]) -> Callable[..., dict[str, Any]]:
    """``POST /encode``: {image, model, encoder?, crop?, combine?, image_weights?, negative_image?,
    noise?} → {model, tokens, embeds}. The body is
    validated with the unit model itself, so its fields, defaults and errors are the unit's."""
    from fastapi import Body, HTTPException

    from ..api.payload import validate_unit

    def encode(body: dict = Body(...)) -> dict[str, Any]:  # noqa: B008 (fastapi's idiom)
        try:
            unit = validate_unit({k: v for k, v in body.items() if k in ENCODE_FIELDS}, 1)
            request = unit.to_request(1)
            request.embeds = None
            _, encoder_name, cond, uncond = engine().tokens(request, placement())
        except IPAdapterError as exc:
            raise HTTPException(status_code=422, detail=str(exc).replace("IP-Adapter unit 1", "encode")) from exc
        return {
            "model": unit.model,
            "encoder": encoder_name,
            "tokens": int(cond.shape[1]),
            "embeds": pack_embeds(cond, uncond, unit.model),
        }

    return encode


__all__ = ["IMAGE_DESCRIPTION", "PREFIX", "adapter_json", "encoder_json", "register_routes", "unit_schema"]
