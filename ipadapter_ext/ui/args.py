"""Script arguments → validated units, for the UI layout (and dict units, as the API sends them).

No gradio import: the script's arguments are plain values by the time they arrive.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..api.payload import api_units, validate_unit
from ..core.errors import IPAdapterError
from ..schema import IPAdapterUnit
from ..unit_inputs import image_given, looks_like_base64, normalise_image
from .layout import NONE, UNIT_FIELDS
from .positional import check_positional


def _upload_dirs() -> list[Path]:
    """Where gradio stores uploads: its temp folder (``GRADIO_TEMP_DIR``) or the system's."""
    dirs = [Path(tempfile.gettempdir())]
    if os.environ.get("GRADIO_TEMP_DIR"):
        dirs.append(Path(os.environ["GRADIO_TEMP_DIR"]))
    return [d.resolve() for d in dirs]


def _open(item: Any) -> Any:
    """An uploaded file → RGB image. gradio 3 hands uploads over as temp-file objects with a
    ``.name`` path, gradio 4 as path strings. Only files inside gradio's upload folders are
    opened, so a positional API request cannot make the server read other files; base64 strings
    (the API's form) are left to the unit schema."""
    if isinstance(item, str):
        if looks_like_base64(item) or not Path(item).is_absolute():
            return item  # base64 (a JPEG's starts with "/9j/", like an absolute path)
        name: Any = item
    else:
        name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
    if not name:
        return item
    path = Path(str(name)).resolve()
    if not any(path.is_relative_to(d) for d in _upload_dirs()):
        raise IPAdapterError(
            "More reference images: only files uploaded through the UI can be read. Send images as base64 in the API."
        )
    with Image.open(path) as im:
        return normalise_image(im).convert("RGB")


def _untouched(values: dict[str, Any]) -> bool:
    """An enabled unit the user has not started to fill in: no image of any kind and no model.

    Such a unit is skipped, not an error. Its "enabled" may come from a saved UI default rather
    than from the user (ui-config.json, an older version's shared label), and a unit tab nobody
    looked at must never stop a generation. Once an image or a model is set, a missing piece is
    an error naming the unit, so a half-configured unit never silently does nothing."""
    has_model = values["model"] not in (None, "", NONE)
    pictures = ("image", "negative_image", "mask", "reference_mask", "composition_image")
    has_image = any(image_given(values.get(name)) for name in pictures) or bool(values["more_images"])
    from_img2img = bool(values.get("image_from_init")) or bool(values.get("mask_from_inpaint"))
    return not (has_model or has_image or from_img2img)


def parse_script_args(args: Sequence[Any]) -> list[tuple[int, IPAdapterUnit]]:
    """(unit number, unit) for the enabled units. ``args`` is ``[accordion_enabled, *unit_fields * N,
    show_maps, show_faces]`` from the UI (the trailing toggles may be absent: older layouts), or
    JSON unit objects from the API."""
    from_api = api_units(args)
    if from_api is not None:
        return from_api
    check_positional(args)
    if not args or not args[0]:
        return []
    rest = list(args[1:])
    units: list[tuple[int, IPAdapterUnit]] = []
    width = len(UNIT_FIELDS)
    toggles = rest[len(rest) - len(rest) % width :]  # the accordion's toggles, after the units
    show_maps = bool(toggles[0]) if toggles else False
    show_faces = bool(toggles[1]) if len(toggles) > 1 else False
    for start in range(0, len(rest) - width + 1, width):
        values = dict(zip(UNIT_FIELDS, rest[start : start + width], strict=True))
        number = start // width + 1
        if not values["enabled"] or _untouched(values):
            continue
        images = [values.pop("image"), *[_open(f) for f in (values.pop("more_images") or [])]]
        values["image"] = [im for im in images if im is not None]
        if values["model"] == NONE:
            values["model"] = ""
        units.append((number, validate_unit({**values, "attention_map": show_maps, "show_faces": show_faces}, number)))
    return units
