"""Saved UI defaults (``ui-config.json``) and the first Generate of a new user.

The WebUI keys each control's saved value by its label (tests/doubles/modules/ui_loadsave.py
mirrors how), so unit controls sharing a label shared one saved value: Unit 1's "Enable" ticked
Units 2 and 3 on a fresh install, and their empty units then stopped the generation.
"""

from __future__ import annotations

from collections import Counter

import gradio as gr
import pytest
from modules import shared
from modules.ui_loadsave import UiLoadsave
from PIL import Image

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.ui.args import parse_script_args
from ipadapter_ext.ui.layout import UNIT_FIELDS
from tests.a1111_env import PLUS, image, unit_args

WIDTH = len(UNIT_FIELDS)


def build_tab(webui, saved: dict | None, units: int = 3) -> tuple[list, UiLoadsave, gr.Blocks]:
    """One txt2img tab as the WebUI builds it: the script's UI, then saved defaults applied."""
    shared.opts.ipadapter_units = units
    with gr.Blocks() as tab:
        inputs = webui.script.ui(False)
    for control in inputs:  # what the WebUI's script runner does with the controls ui() returns
        control.custom_script_source = "ipadapter.py"
    loadsave = UiLoadsave(saved)
    loadsave.add_block(tab, "txt2img")
    return inputs, loadsave, tab


def unit_values(inputs: list, number: int) -> dict:
    start = 1 + (number - 1) * WIDTH
    return {name: c.value for name, c in zip(UNIT_FIELDS, inputs[start : start + WIDTH], strict=True)}


def test_a_fresh_ui_config_keeps_only_unit_1_enabled_and_later_runs_too(webui):
    inputs, first, _ = build_tab(webui, None)
    assert [unit_values(inputs, n)["enabled"] for n in (1, 2, 3)] == [True, False, False]
    again, _, _ = build_tab(webui, first.ui_settings)  # the next start reads the file the first one wrote
    assert [unit_values(again, n)["enabled"] for n in (1, 2, 3)] == [True, False, False]


def test_a_value_saved_for_one_unit_applies_to_that_unit_only(webui):
    _, first, _ = build_tab(webui, None)
    saved = dict(first.ui_settings)
    key = "customscript/ipadapter.py/txt2img/Unit 2 weight/value"
    assert saved[key] == 1.0
    saved[key] = 0.4
    saved["customscript/ipadapter.py/txt2img/Enable unit 1/value"] = False
    inputs, _, _ = build_tab(webui, saved)
    assert [unit_values(inputs, n)["weight"] for n in (1, 2, 3)] == [1.0, 0.4, 1.0]
    assert [unit_values(inputs, n)["enabled"] for n in (1, 2, 3)] == [False, False, False]


def test_every_saved_control_has_its_own_key(webui):
    _, loadsave, tab = build_tab(webui, None, units=4)
    keys = []

    def walk(block):
        if hasattr(block, "children"):
            for child in block.children:
                walk(child)
        elif getattr(block, "custom_script_source", None) and getattr(block, "label", None) is not None:
            keys.append(loadsave.key("txt2img", block, "value"))

    walk(tab)
    assert len(keys) == 4 * WIDTH + 3  # every unit control, the accordion, the map and face toggles
    assert [k for k, n in Counter(keys).items() if n > 1] == []


def test_first_generate_with_only_unit_1_set_up(webui):
    inputs, _, _ = build_tab(webui, None)
    args = [c.value for c in inputs]
    args[0] = True  # the user ticks the accordion, drops an image and picks a model in Unit 1
    args[1 + UNIT_FIELDS.index("image")] = image(1)
    args[1 + UNIT_FIELDS.index("model")] = "tiny-plus"
    units = parse_script_args(args)
    assert [(n, u.model) for n, u in units] == [(1, "tiny-plus")]


def test_an_enabled_unit_nobody_filled_in_is_skipped_whatever_its_saved_state():
    args = unit_args(PLUS, {}, {})  # units 2 and 3 enabled (as an old shared label left them) but empty
    assert [n for n, _ in parse_script_args(args)] == [1]
    empty_editor = {"background": None, "layers": [], "composite": None}  # gradio 4's untouched mask
    args = unit_args(PLUS, {"mask": empty_editor, "negative_image": None})
    assert [n for n, _ in parse_script_args(args)] == [1]


@pytest.mark.parametrize(
    "started",
    [{"model": "tiny-plus"}, {"image": Image.new("RGB", (8, 8))}, {"negative_image": Image.new("RGB", (8, 8))}],
    ids=["model_only", "image_only", "negative_image_only"],
)
def test_a_unit_the_user_started_to_fill_in_is_checked(started):
    units = parse_script_args(unit_args(PLUS, started))
    assert [n for n, _ in units] == [1, 2]  # unit 2 goes on to validation and fails there, by name


def test_a_started_unit_without_a_model_stops_the_generation_by_name(webui):
    from tests.a1111_env import job, run_job

    p = job(webui.model)
    with pytest.raises(IPAdapterError, match="unit 2: no model selected"):
        run_job(webui.script, unit_args(PLUS, {"image": image(2)}), p)


def untouched_gradio4_editor() -> dict:
    """What Forge's gradio 4.40 ImageEditor sends when nobody touched it (seen in the real page)."""
    blank = Image.new("RGBA", (800, 600), (0, 0, 0, 0))
    return {"background": blank, "layers": [blank.copy()], "composite": blank.copy()}


def test_an_untouched_gradio4_mask_editor_is_no_mask(webui):
    from ipadapter_ext.unit_inputs import decode_mask
    from tests.a1111_env import job, run_job

    assert decode_mask(untouched_gradio4_editor(), "mask") is None
    ((_, unit),) = parse_script_args(unit_args({**PLUS, "mask": untouched_gradio4_editor()}))
    assert unit.mask is None or decode_mask(unit.mask, "mask") is None
    assert [n for n, _ in parse_script_args(unit_args(PLUS, {"mask": untouched_gradio4_editor()}))] == [1]
    run_job(webui.script, unit_args({**PLUS, "mask": untouched_gradio4_editor()}), job(webui.model))  # no error


def test_a_painted_gradio4_editor_is_still_a_mask():
    from ipadapter_ext.unit_inputs import decode_mask

    editor = untouched_gradio4_editor()
    editor["layers"][0].paste((255, 255, 255, 255), (0, 0, 400, 600))
    mask = decode_mask(editor, "mask")
    assert mask is not None and mask[:, :399].min() == 1 and mask[:, 401:].max() == 0
