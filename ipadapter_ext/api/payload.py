"""Units as API callers send them: JSON objects in ``alwayson_scripts["IP-Adapter"]["args"]``.

The WebUI copies ``args`` position by position over the script's UI arguments, so a request
``"args": [UNIT, UNIT]`` puts the objects in the first slots and leaves the UI defaults after
them. ``"args": [[UNIT, UNIT]]`` (a list in the first slot) is accepted too. No fastapi import:
errors are :class:`IPAdapterError` and become HTTP 422 in :mod:`.errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.errors import IPAdapterError
from ..schema import PYDANTIC_V2, IPAdapterUnit


def validation_message(exc: Exception) -> str:
    """pydantic 1.x/2.x errors as one line: ``field: problem; field: problem``."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "unit"
        parts.append(f"{where}: {e.get('msg')}")
    return "; ".join(parts)


def validate_unit(data: Any, number: int) -> IPAdapterUnit:
    if not isinstance(data, dict):
        raise IPAdapterError(f"IP-Adapter unit {number}: expected a JSON object, got {type(data).__name__}.")
    try:
        return IPAdapterUnit.model_validate(data) if PYDANTIC_V2 else IPAdapterUnit.parse_obj(data)
    except Exception as exc:  # pydantic's ValidationError differs between 1.x and 2.x
        raise IPAdapterError(f"IP-Adapter unit {number}: {validation_message(exc)}") from exc


def api_units(args: Sequence[Any]) -> list[tuple[int, IPAdapterUnit]] | None:
    """(unit number, unit) for the enabled units of an API request, or ``None`` when ``args`` are
    in the UI layout. API units are JSON objects from the first slot on (or a list of them in the
    first slot); the UI layout starts with the accordion's checkbox, and may hold dicts further on
    (gradio's mask editor values), which must not be mistaken for units."""
    if args and isinstance(args[0], list | tuple) and args[0] and all(isinstance(x, dict) for x in args[0]):
        objects = list(args[0])
    else:
        objects = []
        for a in args:
            if not isinstance(a, dict):
                break
            objects.append(a)
    if not objects:
        return None
    units = [(n, validate_unit(obj, n)) for n, obj in enumerate(objects, start=1)]
    return [(n, u) for n, u in units if u.enabled]
