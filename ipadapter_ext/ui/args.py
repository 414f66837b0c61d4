"""Script arguments → validated units, for the UI layout (and dict units, as the API sends them).

No gradio import: the script's arguments are plain values by the time they arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..api.payload import api_units, validate_unit
from ..schema import IPAdapterUnit
from .layout import NONE, UNIT_FIELDS


def _open(item: Any) -> Any:
    """gradio 3 hands uploaded files over as temp-file objects with a ``.name`` path."""
    name = getattr(item, "name", None) if not isinstance(item, (str, bytes)) else None
    if name is None and isinstance(item, dict):
        name = item.get("name")
    if name:
        with Image.open(Path(name)) as im:
            return im.convert("RGB")
    return item


def parse_script_args(args: Sequence[Any]) -> list[tuple[int, IPAdapterUnit]]:
    """(unit number, unit) for the enabled units. ``args`` is ``[accordion_enabled, *unit_fields * N]``
    from the UI, or JSON unit objects from the API."""
    from_api = api_units(args)
    if from_api is not None:
        return from_api
    if not args or not args[0]:
        return []
    rest = list(args[1:])
    units: list[tuple[int, IPAdapterUnit]] = []
    width = len(UNIT_FIELDS)
    for start in range(0, len(rest) - width + 1, width):
        values = dict(zip(UNIT_FIELDS, rest[start : start + width], strict=True))
        number = start // width + 1
        if not values["enabled"]:
            continue
        images = [values.pop("image"), *[_open(f) for f in (values.pop("more_images") or [])]]
        values["image"] = [im for im in images if im is not None]
        if values["model"] == NONE:
            values["model"] = ""
        units.append((number, validate_unit(values, number)))
    return units
