"""The "IP-Adapter" settings section and typed access to the WebUI's options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.engine import ADAPTERS_KEPT, ENCODERS_KEPT
from ..schema import DEFAULTS, WEIGHT_RANGE

SETTINGS_SECTION = ("ipadapter", "IP-Adapter")


def opt(name: str, default: Any) -> Any:
    from modules import shared

    return getattr(shared.opts, name, default)


def register_settings(
    on_folders_changed: Callable[[], None] | None = None, on_cache_size_changed: Callable[[], None] | None = None
) -> None:
    """Add the section's options. The callbacks are what the model state does when folders or the
    cache size change (passed in, so this module needs nothing of the model state)."""
    import gradio as gr
    from modules import shared

    keys: list[str] = []

    def add(
        key: str, default: Any, label: str, component: Any = None, args: dict | None = None, onchange: Any = None
    ) -> None:
        info = shared.OptionInfo(default, label, component, args, onchange=onchange, section=SETTINGS_SECTION)
        shared.opts.add_option(key, info)
        keys.append(key)

    add("ipadapter_units", 3, "Number of IP-Adapter units (restart the UI to apply)", gr.Slider,
        {"minimum": 1, "maximum": 8, "step": 1})  # fmt: skip
    add("ipadapter_extra_folders", "", "Extra folders with IP-Adapter and CLIP vision models (comma-separated)",
        onchange=on_folders_changed)  # fmt: skip
    add("ipadapter_cache_size", 32, "Reference cache: encoded images and detected faces kept (entries each; 0: none)",
        gr.Slider, {"minimum": 0, "maximum": 256, "step": 1}, onchange=on_cache_size_changed)  # fmt: skip
    add("ipadapter_adapters_kept", ADAPTERS_KEPT, "Loaded IP-Adapter models kept in memory (0: load for each generation)",
        gr.Slider, {"minimum": 0, "maximum": 16, "step": 1}, onchange=on_cache_size_changed)  # fmt: skip
    add("ipadapter_encoders_kept", ENCODERS_KEPT, "Loaded image encoders kept in memory (0: load for each generation)",
        gr.Slider, {"minimum": 0, "maximum": 8, "step": 1}, onchange=on_cache_size_changed)  # fmt: skip
    add("ipadapter_unload_after", False, "Empty the IP-Adapter caches after each generation (frees memory; models "
        "load again every time)", onchange=on_cache_size_changed)  # fmt: skip
    add("ipadapter_default_weight", DEFAULTS.weight, "Default weight of a unit (UI, and API units that give none)",
        gr.Slider, {"minimum": WEIGHT_RANGE[0], "maximum": WEIGHT_RANGE[1], "step": 0.05})  # fmt: skip
    add(
        "ipadapter_offload_encoder",
        True,
        "Move the image encoder and the adapters' projections off the GPU after encoding (frees their VRAM; "
        "always on with --medvram/--lowvram and on Forge)",
    )
    add("ipadapter_hires", True, "Apply IP-Adapter on the hires fix pass too")
    add("ipadapter_attention_map", False, "Show where each unit acts (attention maps) by default in the UI")
    add(
        "ipadapter_face_pack",
        "buffalo_l",
        "Face analysis model pack for FaceID (a folder in models/insightface/models)",
    )
    _extend_frozen_options_schema(keys)


def _extend_frozen_options_schema(keys: list[str]) -> None:
    """Make ``GET /sdapi/v1/options`` answer our settings where the host froze its schema early.

    The WebUI answers that route through ``modules.api.models.OptionsModel``, a pydantic model
    built from the options known when that module is first imported; options added later are
    dropped from the answer. On Forge, the built-in ControlNet imports it while the built-in
    extensions load, before any other extension, so no extension's settings are ever listed
    (UI or ``--nowebui``). The API's routes are created later (``Api.__init__`` reads
    ``models.OptionsModel`` then), so the model is extended here, once, with the missing
    fields, the same way the host builds them. Nothing happens where the module is not imported
    yet (A1111: it will see our options) or already has them.
    """
    import sys

    models = sys.modules.get("modules.api.models")
    base = getattr(models, "OptionsModel", None)
    if base is None:
        return
    from typing import Optional

    import pydantic
    from modules import shared

    known = getattr(base, "model_fields", None) or getattr(base, "__fields__", {})
    fields = {}
    for key in keys:
        if key in known:
            continue
        info = shared.opts.data_labels[key]
        kind = type(info.default) if info.default is not None else Any
        fields[key] = (Optional[kind], pydantic.Field(default=info.default, description=info.label))  # noqa: UP045 (pydantic 1 needs Optional)
    if fields:
        models.OptionsModel = pydantic.create_model("Options", __base__=base, **fields)
