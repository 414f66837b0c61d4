"""The IP-Adapter unit: one definition of fields, types, ranges and defaults.

The UI builds its components from these defaults, the script parses its arguments into this
model, and the API and infotext (later) read and write the same model. Works with pydantic 1.x
(A1111) and 2.x (Forge).
"""

from __future__ import annotations

from typing import Any

import pydantic
from pydantic import BaseModel, Field

from .core.attention import WeightMode
from .core.engine import AUTO, UnitRequest
from .core.errors import IPAdapterError
from .core.preprocess import CropMode

PYDANTIC_V2 = pydantic.VERSION.startswith("2")
WEIGHT_RANGE = (-1.0, 3.0)


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

    if PYDANTIC_V2:
        model_config = {"extra": "forbid", "arbitrary_types_allowed": True}
    else:

        class Config:
            extra = "forbid"
            arbitrary_types_allowed = True

    def images(self) -> list:
        if self.image is None:
            return []
        items = self.image if isinstance(self.image, list | tuple) else [self.image]
        return [im for im in items if im is not None]

    def to_request(self, number: int) -> UnitRequest:
        if self.start > self.end:
            raise IPAdapterError(f"IP-Adapter unit {number}: start ({self.start}) is after end ({self.end}).")
        return UnitRequest(
            number=number,
            images=self.images(),
            model=self.model,
            encoder=self.encoder or AUTO,
            weight=self.weight,
            start=self.start,
            end=self.end,
            crop=self.crop.value,
            mode=WeightMode.V_ONLY,
        )


DEFAULTS = IPAdapterUnit()
