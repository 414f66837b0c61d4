"""Turning what callers send (base64 strings, PIL images, arrays, gradio's editor values, "1, 0.5"
text) into images, masks and number lists, with errors that say which unit and field is wrong."""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .core.attend.masks import mask_tensor
from .core.errors import IPAdapterError

#: Reference images larger than this are refused before decoding (a 8192×8192 image is 67 M).
MAX_IMAGE_PIXELS = 8192 * 8192
#: The formats images may come in as base64 (Pillow's names); the messages name the same three.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
_NUMBER_SEPARATOR = re.compile(r"[,;\s]+")
#: What base64 text is made of (line breaks and spaces included: MIME and ``base64`` wrap lines).
_BASE64_TEXT = re.compile(r"^(data:[^,]*,)?[A-Za-z0-9+/=\s]+$")
#: First bytes of formats people send by mistake, to name them in the error.
_SIGNATURES = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00", "AVIF/HEIC"),
)


def looks_like_base64(value: str) -> bool:
    """Whether ``value`` is base64 text (optionally a ``data:`` URL) rather than a file path: a
    JPEG's base64 starts with ``/9j/``, which is also how an absolute path starts."""
    return bool(_BASE64_TEXT.match(value[:4096])) and (value.startswith("data:") or len(value) >= 64)


def base64_bytes(value: str, where: str, what: str = "the image") -> bytes:
    """The bytes of base64 text (``data:`` prefix allowed). Whitespace is ignored, as the WebUI's
    own API ignores it: clients that wrap lines at 76 characters send valid images."""
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IPAdapterError(f"{where}: {what} is not valid base64 ({exc}).") from exc


def _format_name(raw: bytes) -> str:
    for signature, name in _SIGNATURES:
        if raw.startswith(signature):
            return f" (it is {name})"
    return ""


def normalise_image(image: Image.Image) -> Image.Image:
    """An image as a viewer shows it: rotated by its EXIF orientation (phones store portraits
    sideways with a tag; gradio and the WebUI's API apply it, so the API path must too), and
    16-bit greyscale (Pillow's mode ``I;16``/``I``) scaled to 8 bits, which a plain conversion
    to RGB would clip to white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return image


def decode_raw(value: str, where: str) -> Image.Image:
    """A base64 PNG/JPEG/WebP (``data:`` prefix allowed) → image in its own mode, upright."""
    raw = base64_bytes(value, where)
    try:
        image = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except Exception as exc:
        raise IPAdapterError(
            f"{where}: the image data is not a PNG, JPEG or WebP image{_format_name(raw)}. Send one of those."
        ) from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise IPAdapterError(
            f"{where}: the image is {width}×{height}; at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels are "
            "accepted. Downscale it first (the encoder sees 224×224 anyway)."
        )
    try:
        image.load()
    except Exception as exc:
        raise IPAdapterError(f"{where}: the image could not be decoded ({exc}); it may be truncated.") from exc
    return normalise_image(image)


def decode_image(value: str, where: str) -> Image.Image:
    """A base64 image → RGB."""
    return decode_raw(value, where).convert("RGB")


def as_image(value: Any, where: str) -> Any:
    """One reference-like image: base64 is decoded; PIL images and arrays pass through."""
    if isinstance(value, str):
        return decode_image(value, where)
    if isinstance(value, Image.Image) or hasattr(value, "__array__"):
        return value
    raise IPAdapterError(f"{where}: expected a base64-encoded image, got {type(value).__name__}.")


def _painted(image: Any) -> bool:
    return image is not None and bool(np.asarray(image).any())


def _editor_mask(value: dict) -> Any:
    """gradio's drawing values: 3.x ``{"image", "mask"}`` (strokes white on black) and 4.x
    ``{"background", "layers", "composite"}``. Painted strokes win; without any, the uploaded
    picture is the mask (a black-and-white mask made elsewhere)."""
    if "mask" in value or "image" in value:
        return value.get("mask") if _painted(value.get("mask")) else value.get("image")
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    alphas = [
        np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)[..., -1] for layer in layers
    ]
    if alphas and any(a.any() for a in alphas):
        return np.maximum.reduce(alphas)
    background = value.get("background")
    return None if _transparent(background) else background


def _transparent(image: Any) -> bool:
    """gradio 4's editor sends an untouched canvas as a fully transparent 800×600 background: that
    is no mask, not a black one."""
    if image is None:
        return True
    if isinstance(image, Image.Image):
        return image.mode in ("RGBA", "LA", "PA") and image.getchannel("A").getextrema()[1] == 0
    array = np.asarray(image)
    return array.ndim == 3 and array.shape[-1] in (2, 4) and not array[..., -1].any()


def image_given(value: Any) -> bool:
    """Whether an image input holds anything: an empty gradio 4 editor is a dict of ``None`` s,
    an empty API field an empty string."""
    if isinstance(value, dict):
        return _editor_mask(value) is not None
    if isinstance(value, str):
        return bool(value)
    return value is not None


def decode_mask(value: Any, where: str) -> torch.Tensor | None:
    """A mask in any accepted form → float [H, W] in [0, 1] (white: the unit acts), or ``None``."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = _editor_mask(value)
        if value is None:
            return None
    if isinstance(value, str):
        if not value:
            return None
        value = decode_raw(value, where)
    return mask_tensor(value, where)


def number_list(value: Any, low: float, high: float) -> list[float] | None:
    """``[1, 0.5]``, ``"1, 0.5"`` or ``"1 0.5"`` → floats in [low, high]; empty → ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        items: Sequence[Any] = [x for x in _NUMBER_SEPARATOR.split(value.strip()) if x]
    elif isinstance(value, Sequence):
        items = value
    else:
        raise ValueError(f"expected a list of numbers, got {type(value).__name__}")
    if not items:
        return None
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{item!r} is not a number") from None
        if not low <= number <= high:  # also refuses NaN
            raise ValueError(f"{number:g} is outside [{low:g}, {high:g}]")
        out.append(number)
    return out
