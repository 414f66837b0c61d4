"""IP-Adapter axes for the WebUI's built-in X/Y/Z plot script (``scripts/xyz_grid.py``).

The plot script is not importable by name: the WebUI loads it from its file, so its module is
found through ``modules.scripts.scripts_data`` (the entry whose script class comes from the module
named ``xyz_grid.py``). For every grid cell the plot script shallow-copies the processing object
and calls each axis's ``apply(p, x, xs)`` on the copy; the axes here only record an override on
that copy, and :func:`apply_overrides` applies it to every enabled unit when the job starts.
Values are checked before the grid runs (``confirm``), with the same rules as the unit schema.

No gradio import, and ``modules`` is imported only inside functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..api.payload import validation_message
from ..core.attend.attention import WeightMode
from ..core.attend.context import StrengthMode
from ..core.attend.weights import WeightType
from ..core.encode.noise import NoiseType
from ..core.encode.preprocess import CropMode
from ..core.errors import IPAdapterError
from ..schema import PYDANTIC_V2, IPAdapterUnit

AXIS_OVERRIDE_ATTR = "ipadapter_overrides"
XYZ_MODULE_NAME = "xyz_grid.py"  # modules/script_loading.py names a script module by its file name
_MARK = "_ipadapter_axis"  # set on the AxisOption objects this module created


class AxisValueError(RuntimeError):
    """A value on an IP-Adapter axis that the unit schema rejects (the plot script shows it)."""


@dataclass(frozen=True)
class Axis:
    label: str
    field: str
    type: type
    choices: tuple[str, ...] = ()  # fixed choices (the model axis lists the current models instead)


AXES = (
    Axis("[IP-Adapter] Weight", "weight", float),
    Axis("[IP-Adapter] Model", "model", str),
    Axis("[IP-Adapter] Start", "start", float),
    Axis("[IP-Adapter] End", "end", float),
    Axis("[IP-Adapter] Weight type", "weight_type", str, tuple(t.value for t in WeightType)),
    Axis("[IP-Adapter] Weight mode", "weight_mode", str, tuple(m.value for m in WeightMode)),
    Axis("[IP-Adapter] Composition weight", "composition_weight", float),
    Axis("[IP-Adapter] Noise", "noise", float),
    Axis("[IP-Adapter] FaceID LoRA strength", "lora_strength", float),
    Axis("[IP-Adapter] FaceID v2 weight", "faceid_v2_weight", float),
    Axis("[IP-Adapter] Redux strength mode", "redux_strength_mode", str, tuple(m.value for m in StrengthMode)),
    Axis("[IP-Adapter] Redux downsampling", "redux_downsample", int),
    Axis("[IP-Adapter] Style boost", "style_boost", float),
    Axis("[IP-Adapter] Composition boost", "composition_boost", float),
    Axis("[IP-Adapter] Crop", "crop", str, tuple(c.value for c in CropMode)),
    Axis("[IP-Adapter] Sharpening", "sharpening", float),
    Axis("[IP-Adapter] Noise type", "noise_type", str, tuple(t.value for t in NoiseType)),
)
_FIELDS = {a.field for a in AXES}


def _validate(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (unit fields) checked and coerced by the unit schema; raises what pydantic raises."""
    unit = IPAdapterUnit.model_validate(values) if PYDANTIC_V2 else IPAdapterUnit.parse_obj(values)
    return {name: getattr(unit, name) for name in values}


def make_apply(field: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, x: Any, _xs: Any) -> None:
        # a new dict per call: the plot script's cells are shallow copies of one processing object,
        # so mutating a dict inherited from it would leak one cell's value into the next
        overrides = dict(getattr(p, AXIS_OVERRIDE_ATTR, None) or {})
        overrides[field] = x
        setattr(p, AXIS_OVERRIDE_ATTR, overrides)

    return apply


def make_confirm(axis: Axis, model_names: Callable[[], list[str]] | None = None) -> Callable[[Any, Sequence], None]:
    def confirm(_p: Any, xs: Sequence) -> None:
        for x in xs:
            try:
                _validate({axis.field: x})
            except Exception as exc:  # pydantic's ValidationError differs between 1.x and 2.x
                raise AxisValueError(f'{axis.label} value "{x}" is not valid: {validation_message(exc)}') from exc
        if model_names is not None:
            known = list(model_names())
            for x in xs:
                if x not in known:
                    available = ", ".join(known) or "none found"
                    raise AxisValueError(f'{axis.label}: unknown IP-Adapter model "{x}"; available: {available}')

    return confirm


def find_xyz_module() -> Any | None:
    """The loaded ``scripts/xyz_grid.py`` module, or ``None`` (not loaded, or no WebUI at all)."""
    try:
        from modules import scripts
    except ImportError:
        return None
    for entry in list(getattr(scripts, "scripts_data", None) or []):
        script_class = getattr(entry, "script_class", None)
        if getattr(script_class, "__module__", None) == XYZ_MODULE_NAME:
            return getattr(entry, "module", None)
    return None


def build_axes(xyz: Any, model_names: Callable[[], list[str]]) -> list[Any]:
    """The axes as the plot module's own ``AxisOption`` objects."""
    options = []
    for axis in AXES:
        is_model = axis.field == "model"
        choices = (
            (lambda: list(model_names())) if is_model else (lambda a=axis: list(a.choices)) if axis.choices else None
        )
        option = xyz.AxisOption(
            axis.label,
            axis.type,
            make_apply(axis.field),
            confirm=make_confirm(axis, model_names if is_model else None),
            choices=choices,
        )
        setattr(option, _MARK, True)
        options.append(option)
    return options


def register_xyz_axes(model_names: Callable[[], list[str]]) -> bool:
    """Add the axes to the plot script once; returns whether the plot script was found.

    Idempotent: a label already present is not added again. One of ours from an earlier
    registration (a reloaded extension) is replaced in place so that it calls the current code;
    an option with the same label from someone else is left alone.
    """
    xyz = find_xyz_module()
    if xyz is None or not hasattr(xyz, "axis_options") or not hasattr(xyz, "AxisOption"):
        return False
    options = xyz.axis_options
    for option in build_axes(xyz, model_names):
        index = next((i for i, o in enumerate(options) if getattr(o, "label", None) == option.label), None)
        if index is None:
            options.append(option)
        elif getattr(options[index], _MARK, False):
            options[index] = option
    return True


def apply_overrides(p: Any, units: list) -> list:
    """``(number, unit)`` pairs with the plot's overrides applied to every enabled unit (copies;
    the units passed in are not changed). Raises :class:`IPAdapterError` for an invalid override."""
    overrides = getattr(p, AXIS_OVERRIDE_ATTR, None)
    if not overrides:
        return units
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise IPAdapterError(f"IP-Adapter (X/Y/Z plot): unknown override {', '.join(unknown)}.")
    try:
        update = _validate(dict(overrides))
    except Exception as exc:
        raise IPAdapterError(f"IP-Adapter (X/Y/Z plot): {validation_message(exc)}") from exc
    result = []
    for number, unit in units:
        if unit.enabled:
            unit = unit.model_copy(update=update) if PYDANTIC_V2 else unit.copy(update=update)
        result.append((number, unit))
    return result
