"""Double of modules/ui_loadsave.py (A1111 1.10.1; Forge keeps the same logic): how the WebUI
saves and restores UI defaults in ``ui-config.json``.

What matters for an extension, in behaviour:

* a component is found by walking the blocks of each tab; one with a ``label`` is tracked under
  ``<tab>/<label>/<field>``, prefixed by ``customscript/<script file>/`` for the controls a
  script's ``ui()`` returned (the WebUI sets ``custom_script_source`` on exactly those);
* only components whose exact type is a slider, checkbox, radio, text box, number, dropdown (or the
  WebUI's ``InputAccordion``) have their ``value`` tracked; the ``visible`` flag is tracked too;
* when the file has no entry for a key, the component's current value is stored under it, so a
  second component with the same key built later *reads* that value: the first one built wins.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from .ui_components import InputAccordion

_VALUE_TYPES = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)


class UiLoadsave:
    def __init__(self, saved: dict[str, Any] | None = None) -> None:
        self.ui_settings: dict[str, Any] = dict(saved or {})

    def key(self, path: str, obj: Any, field: str) -> str:
        key = f"{path}/{obj.label}/{field}"
        source = getattr(obj, "custom_script_source", None)
        return f"customscript/{source}/{key}" if source is not None else key

    def _apply(self, path: str, obj: Any, field: str) -> None:
        key = self.key(path, obj, field)
        saved = self.ui_settings.get(key)
        if saved is None:
            self.ui_settings[key] = getattr(obj, field)
            return
        if isinstance(obj, gr.Dropdown) and field == "value":
            choices = [c[0] if isinstance(c, tuple) else c for c in obj.choices or []]
            if saved not in choices:
                return
        setattr(obj, field, saved)

    def add_component(self, path: str, obj: Any) -> None:
        kind = type(obj)
        if kind in _VALUE_TYPES and obj.visible:
            self._apply(path, obj, "visible")
        if kind in _VALUE_TYPES or kind is InputAccordion:
            self._apply(path, obj, "value")

    def add_block(self, block: Any, path: str) -> None:
        if hasattr(block, "children"):
            for child in block.children:
                self.add_block(child, path)
        elif getattr(block, "label", None) is not None:
            self.add_component(path, block)
