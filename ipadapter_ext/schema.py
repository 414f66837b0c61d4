"""The IP-Adapter unit: one definition of fields, types, ranges and defaults.

The UI builds its components from these defaults, the script parses its arguments into this
model, and the API and infotext (later) read and write the same model. Works with pydantic 1.x
(A1111) and 2.x (Forge).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import pydantic
from PIL import Image
from pydantic import BaseModel, Field

from .core.attention import WeightMode
from .core.embeds import unpack_embeds
from .core.engine import AUTO, UnitRequest
from .core.errors import IPAdapterError
from .core.preprocess import CropMode

PYDANTIC_V2 = pydantic.VERSION.startswith("2")
WEIGHT_RANGE = (-1.0, 3.0)
#: Reference images larger than this are refused before decoding (a 8192×8192 image is 67 M).
MAX_IMAGE_PIXELS = 8192 * 8192


def decode_image(value: str, where: str) -> Image.Image:
    """A base64 PNG/JPEG/WebP (``data:`` prefix allowed) → RGB image, with errors that say why."""
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise IPAdapterError(f"{where}: the image is not valid base64 ({exc}).") from exc
    try:
        image = Image.open(io.BytesIO(raw))
    except Exception as exc:
        raise IPAdapterError(f"{where}: the image data is not a PNG, JPEG or WebP image.") from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise IPAdapterError(
            f"{where}: the image is {width}×{height}; at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels are "
            "accepted. Downscale it first (the encoder sees 224×224 anyway)."
        )
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise IPAdapterError(f"{where}: the image could not be decoded ({exc}); it may be truncated.") from exc


class IPAdapterUnit(BaseModel):
    """One unit. ``image`` holds one reference or a list (PIL images, arrays, or base64 strings)."""

    enabled: bool = True
    image: Any = None
    model: str = ""
    encoder: str = AUTO
    weight: float = Field(1.0, ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1])
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(1.0, ge=0.0, le=1.0)
    crop: CropMode = CropMode.CENTER
    embeds: str | None = None  # base64 safetensors from /ipadapter/v1/encode, instead of image

    if PYDANTIC_V2:
        model_config = {"extra": "forbid", "arbitrary_types_allowed": True}
    else:

        class Config:
            extra = "forbid"
            arbitrary_types_allowed = True

    def images(self, number: int = 1) -> list:
        """The references as images; base64 strings (the API's form) are decoded here."""
        if self.image is None:
            return []
        items = self.image if isinstance(self.image, list | tuple) else [self.image]
        where = f"IP-Adapter unit {number}, image"
        out = []
        for im in items:
            if isinstance(im, str):
                out.append(decode_image(im, where))
            elif isinstance(im, Image.Image) or hasattr(im, "__array__"):
                out.append(im)
            elif im is not None:
                raise IPAdapterError(f"{where}: expected a base64-encoded image, got {type(im).__name__}.")
        return out

    def to_request(self, number: int) -> UnitRequest:
        if self.start > self.end:
            raise IPAdapterError(f"IP-Adapter unit {number}: start ({self.start}) is after end ({self.end}).")
        return UnitRequest(
            number=number,
            images=self.images(number),
            model=self.model,
            encoder=self.encoder or AUTO,
            weight=self.weight,
            start=self.start,
            end=self.end,
            crop=self.crop.value,
            mode=WeightMode.V_ONLY,
            embeds=unpack_embeds(self.embeds, f"IP-Adapter unit {number}, embeds") if self.embeds else None,
        )


DEFAULTS = IPAdapterUnit()


def given_fields(unit: IPAdapterUnit) -> set[str]:
    """The fields the caller set explicitly (the rest took their defaults)."""
    return set(unit.model_fields_set if PYDANTIC_V2 else unit.__fields_set__)


def with_default_weight(unit: IPAdapterUnit, weight: float) -> IPAdapterUnit:
    """``unit`` with the configured default weight where the caller gave none."""
    if "weight" in given_fields(unit) or weight == unit.weight:
        return unit
    update = {"weight": weight}
    return unit.model_copy(update=update) if PYDANTIC_V2 else unit.copy(update=update)
