"""Units in the PNG info ("IP-Adapter 1: model: …, weight: …"), and back for "Send to txt2img".

One key per unit, its value a readable ``name: value`` list using the API's field names. The
fields that predate weight types are always written; newer ones only when they differ from the
default, so ordinary infotexts stay short. Lists are written space-separated (the list itself is
comma-separated). The WebUI quotes the value and unquotes it on paste; this module only writes
and reads the inner text. Images (references, negative image, mask) are not stored: pasting
tells the user which ones to drop again.
"""

from __future__ import annotations

import re
from typing import Any

from ..core.attend.weights import WeightType
from ..schema import DEFAULTS, IPAdapterUnit

KEY = "IP-Adapter {}"
_ALWAYS = ("model", "encoder", "weight", "start", "end", "crop", "images")
_BOOLS = ("image_from_init", "mask_from_inpaint", "mask_invert", "per_batch_image")  # written as "yes" when on
_OPTIONAL = (
    "weight_type", "composition_weight", "weight_mode", "layer_weights", "combine", "image_weights", "noise",
    "lora_strength", "faceid_v2_weight", *_BOOLS, "redux_strength_mode", "redux_downsample", "redux_downsample_mode",
    "style_boost", "composition_boost", "sharpening", "noise_type", "noise_blur",
)  # fmt: skip
_IMAGES = ("negative_image", "mask", "reference_mask", "composition_image")  # written as "yes" when given
#: Written for the reader, not pasted: how a tiled reference was cut ("3 across").
_INFO = ("tiles",)
#: Written by the host after preparing the unit, for the reader only (Redux: tokens it added).
_NOTES = ("context_tokens",)
_FIELDS = (*_ALWAYS, *_OPTIONAL, *_IMAGES, *_INFO, *_NOTES)
_FLOATS = ("weight", "start", "end", "composition_weight", "noise", "lora_strength", "faceid_v2_weight",
           "style_boost", "composition_boost", "sharpening")  # fmt: skip
_INTS = ("redux_downsample", "noise_blur")
_CHOICES = ("encoder", "crop", "weight_type", "weight_mode", "combine", "redux_strength_mode", "redux_downsample_mode",
            "noise_type")  # fmt: skip
#: Each boost only means something with its precise weight type, so only then is it written.
_BOOST_OF = {"style_boost": WeightType.PRECISE_STYLE, "composition_boost": WeightType.COMPOSITION_PRECISE}
#: The fields a paste restores into the UI (in addition to the unit's enabled box).
PASTE_FIELDS = ("model", "encoder", "weight", "start", "end", "crop", *_OPTIONAL)
_SPLIT = re.compile(r", (?=(?:" + "|".join(_FIELDS) + r"): )")
_HASH = re.compile(r"^(?P<name>.*?)(?: \[(?P<hash>[0-9a-fA-F]{6,})\])?$")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return " ".join(f"{float(v):g}" for v in value)
    return str(getattr(value, "value", value))


def _written(unit: IPAdapterUnit, name: str) -> bool:
    if name in _BOOST_OF and unit.weight_type is not _BOOST_OF[name]:
        return False
    return getattr(unit, name) != getattr(DEFAULTS, name)


def _image_given(value: object) -> bool:
    """An image field is set: anything but ``None`` and "" (never compared with ``in``: a numpy
    mask from the drawing tool has no single truth value)."""
    return value is not None and not (isinstance(value, str) and value == "")


def unit_infotext(unit: IPAdapterUnit, model_hash: str | None, images: int, tiles: str | None = None) -> str:
    """``tiles``: how the (first) reference was tiled, for crop "tiles"."""
    model = f"{unit.model} [{model_hash}]" if model_hash else unit.model
    parts = [
        f"model: {model}",
        f"encoder: {unit.encoder}",
        f"weight: {unit.weight:g}",
        f"start: {unit.start:g}",
        f"end: {unit.end:g}",
        f"crop: {unit.crop.value}",
        f"images: {'init' if unit.image_from_init else images}",
    ]
    parts += [f"{n}: {_text(getattr(unit, n))}" for n in _OPTIONAL if _written(unit, n)]
    parts += [f"{n}: yes" for n in _IMAGES if _image_given(getattr(unit, n))]
    if tiles is not None:
        parts.append(f"tiles: {tiles}")
    return ", ".join(parts)


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
    for name in _FLOATS:
        try:
            out[name] = float(values[name])
        except (KeyError, ValueError):
            continue
    for name in _INTS:
        try:
            out[name] = int(values[name])
        except (KeyError, ValueError):
            continue
    for name in (*_CHOICES, "layer_weights", "image_weights", *_INFO):
        if name in values:
            out[name] = values[name]
    if "images" in values and values["images"].isdigit():
        out["images"] = int(values["images"])
    for name in _BOOLS:
        if name in values:
            out[name] = values[name] == "yes"
    for name in _IMAGES:
        if values.get(name) == "yes":
            out[name] = True
    return out


def pasted_unit(params: dict[str, Any], number: int) -> dict[str, Any] | None:
    """Parsed fields of unit ``number`` from a pasted infotext, or ``None`` if it is absent."""
    text = params.get(KEY.format(number))
    return parse_unit_infotext(str(text)) if text is not None else None


def paste_value(fields: dict[str, Any], name: str) -> Any:
    """The UI value for ``name``: pasted, or the default (a paste sets every field, so a unit
    pasted without, say, a weight type must not keep the one left in the UI)."""
    if name in fields:
        return fields[name]
    if name == "style_boost" and fields.get("weight_type") == WeightType.PRECISE_STYLE.value:
        # written before style_boost existed: precise style's boost was the composition weight
        return fields.get("composition_weight", DEFAULTS.style_boost)
    if name in _OPTIONAL:
        default = getattr(DEFAULTS, name)
        if name in _FLOATS or name in _BOOLS or name in _INTS:
            return default
        return "" if default is None else _text(default)
    return None


def paste_notice(fields: dict[str, Any]) -> str:
    if fields.get("image_from_init"):
        return "⚠ Settings restored from PNG info; the reference is the img2img input."
    n = fields.get("images", 1)
    labels = (
        ("negative_image", "the negative image"), ("mask", "the mask"), ("reference_mask", "the reference mask"),
        ("composition_image", "the composition image"),
    )  # fmt: skip
    extra = [label for name, label in labels if fields.get(name)]
    also = f" Add {' and '.join(extra)} again too." if extra else ""
    return f"⚠ Settings restored from PNG info; drop the reference image{'s' if n != 1 else ''} again ({n}).{also}"
