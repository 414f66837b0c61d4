"""Type checks of the positional script arguments (the UI layout), before anything reads them.

API callers may send the UI's argument list instead of unit objects (``/sdapi/v1/script-info``
shows it). The WebUI copies whatever they send over the UI defaults, slot by slot, without looking
at it, and pydantic would then coerce what it can: ``"args": ["hello"]`` read as a ticked
accordion with no unit, ``"weight": "0.5"`` as a number, ``42`` as a model name. A request would
generate without the unit, or with something else than asked, and say nothing. Every slot is
therefore checked against the type its component produces, and a wrong one is refused with its
position, field and the expected type (HTTP 422 for the API).

The kind of each unit field comes from the unit schema (a field added there is checked without
a change here); only the image fields, whose schema type is ``Any``, are listed by name.
"""

from __future__ import annotations

import enum
import numbers
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from ..core.errors import IPAdapterError
from ..schema import IPAdapterUnit
from .layout import UNIT_FIELDS

#: The accordion's toggles after the units, in order.
TOGGLES = ("show_maps", "show_faces")


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _is_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _is_numbers(value: Any) -> bool:
    """A text box ("1, 0.5") or a list of numbers; the values themselves are checked by the schema."""
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, list | tuple) and all(_is_number(v) or isinstance(v, str) for v in value)


def _is_image(value: Any) -> bool:
    """gradio's PIL image (or an array), or base64 text from the API."""
    return value is None or isinstance(value, str | Image.Image) or hasattr(value, "__array__")


def _is_mask(value: Any) -> bool:
    """An image, or the drawing editors' dicts (gradio 3 ``{image, mask}``, gradio 4 ``{background, …}``)."""
    return _is_image(value) or isinstance(value, dict)


def _is_files(value: Any) -> bool:
    """gradio's uploads (file objects, paths, ``{name}`` dicts) or base64 texts, as a list."""
    return value is None or (isinstance(value, list | tuple) and all(v is not None for v in value))


#: kind → (check, what the message says is expected)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "bool": (_is_bool, "true or false"),
    "number": (_is_number, "a number"),
    "text": (_is_text, "a text (or null)"),
    "numbers": (_is_numbers, 'a list of numbers or a text like "1, 0.5"'),
    "image": (_is_image, "a base64 image (or null)"),
    "mask": (_is_mask, "a base64 image (or null)"),
    "files": (_is_files, "a list of base64 images (or null)"),
}
_BY_NAME = {
    "image": "image",
    "negative_image": "image",
    "mask": "mask",
    "more_images": "files",
    "reference_mask": "mask",
    "composition_image": "image",
}


def _kind_of(annotation: Any) -> str | None:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _kind_of(args[0]) if len(args) == 1 else None
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, Sequence):
        return "numbers" if args and args[0] in (float, int) else None
    if annotation is bool:
        return "bool"
    if annotation in (float, int):
        return "number"
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return "text"
    return None


def field_kinds() -> dict[str, str]:
    """Each positional unit field's kind; a field the schema types as ``Any`` must be named in
    ``_BY_NAME`` (a test holds every field of ``UNIT_FIELDS`` to having a kind)."""
    hints = typing.get_type_hints(IPAdapterUnit)
    kinds = {}
    for name in UNIT_FIELDS:
        kind = _BY_NAME.get(name) or _kind_of(hints.get(name))
        if kind is not None:
            kinds[name] = kind
    return kinds


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_positional(args: Sequence[Any]) -> None:
    """Raise an :class:`IPAdapterError` for the first slot whose value is not of its field's type."""
    if not args:
        return
    if not _is_bool(args[0]):
        raise IPAdapterError(
            f"IP-Adapter: the first argument is the accordion's on/off switch and must be true or false, "
            f'not {_show(args[0])}. Send unit objects instead: "args": [{{"image": …, "model": …}}] '
            "(see GET /ipadapter/v1/schema)."
        )
    kinds = field_kinds()
    width = len(UNIT_FIELDS)
    rest = len(args) - 1
    units = rest // width
    toggles = units > 0 and rest - units * width <= len(TOGGLES)  # else a shorter list ends in a partial unit
    for index, value in enumerate(args[1:], start=1):
        offset = index - 1
        if offset < units * width or not toggles:
            number, name = offset // width + 1, UNIT_FIELDS[offset % width]
            what = f"unit {number} '{name}'"
        else:
            name = TOGGLES[offset - units * width]
            what = f"'{name}'"
        kind = "bool" if name in TOGGLES else kinds.get(name)
        if kind is None:
            continue
        check, expected = KINDS[kind]
        if not check(value):
            raise IPAdapterError(
                f"IP-Adapter: positional argument {index} ({what}) must be {expected}, not {_show(value)}. "
                "Send unit objects instead of the UI's argument list to name each field "
                "(see GET /ipadapter/v1/schema)."
            )
