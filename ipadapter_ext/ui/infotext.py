"""Units in the PNG info ("IP-Adapter 1: model: …, weight: …"), and back for "Send to txt2img".

One key per unit, its value a readable ``name: value`` list. The WebUI quotes the value (it
contains commas) and unquotes it on paste; this module only writes and reads the inner text.
Reference images are not stored, so pasting tells the user to drop them again.
"""

from __future__ import annotations

import re
from typing import Any

from ..schema import IPAdapterUnit

KEY = "IP-Adapter {}"
_FIELDS = ("model", "encoder", "weight", "start", "end", "crop", "images")
_SPLIT = re.compile(r", (?=(?:" + "|".join(_FIELDS) + r"): )")
_HASH = re.compile(r"^(?P<name>.*?)(?: \[(?P<hash>[0-9a-fA-F]{6,})\])?$")


def unit_infotext(unit: IPAdapterUnit, model_hash: str | None, images: int) -> str:
    model = f"{unit.model} [{model_hash}]" if model_hash else unit.model
    return (
        f"model: {model}, encoder: {unit.encoder}, weight: {unit.weight:g}, start: {unit.start:g}, "
        f"end: {unit.end:g}, crop: {unit.crop.value}, images: {images}"
    )


def parse_unit_infotext(text: str) -> dict[str, Any]:
    """The unit fields found in ``text`` (unknown names are ignored, for older/newer versions)."""
    values: dict[str, Any] = {}
    for part in _SPLIT.split(text.strip()):
        name, sep, value = part.partition(": ")
        if not sep or name not in _FIELDS:
            continue
        # Unknown keys written by other versions stay glued to the value before them; only the
        # model name may itself contain ", ", so other values end at the first one.
        values[name] = value.strip() if name == "model" else value.split(", ", 1)[0].strip()
    out: dict[str, Any] = {}
    if "model" in values:
        match = _HASH.match(values["model"])
        out["model"] = match.group("name") if match else values["model"]
        if match and match.group("hash"):
            out["model_hash"] = match.group("hash")
    for name in ("weight", "start", "end"):
        try:
            out[name] = float(values[name])
        except (KeyError, ValueError):
            continue
    for name in ("encoder", "crop"):
        if name in values:
            out[name] = values[name]
    if "images" in values and values["images"].isdigit():
        out["images"] = int(values["images"])
    return out


def pasted_unit(params: dict[str, Any], number: int) -> dict[str, Any] | None:
    """Parsed fields of unit ``number`` from a pasted infotext, or ``None`` if it is absent."""
    text = params.get(KEY.format(number))
    return parse_unit_infotext(str(text)) if text is not None else None


def paste_notice(fields: dict[str, Any]) -> str:
    n = fields.get("images", 1)
    return f"⚠ Settings restored from PNG info; drop the reference image{'s' if n != 1 else ''} again ({n})."
