"""Strict positional arguments (issue 24): the UI's argument list sent through the API is checked
slot by slot, so ``"args": ["hello"]`` or a number in a text slot is a 422 naming the slot, not a
generation without the unit."""

from __future__ import annotations

import pytest
import torch
from fastapi import HTTPException
from PIL import Image

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.ui.args import parse_script_args
from ipadapter_ext.ui.layout import UNIT_FIELDS
from ipadapter_ext.ui.positional import KINDS, field_kinds
from tests.a1111_env import PLUS, job, run_job, unit_args

#: A value of the wrong type for each kind, and a right one that is not the UI's default.
WRONG = {"bool": "yes", "number": "0.5", "text": 42, "numbers": {"a": 1}, "image": 42, "mask": 7.5, "files": "abc"}
RIGHT = {
    "bool": False,
    "number": 0.5,
    "text": "center",
    "numbers": [1, 0.5],
    "image": None,
    "mask": {"image": None, "mask": None},
    "files": [],
}


def test_every_positional_field_has_a_kind():
    """A field added to the layout is checked too: its schema type gives its kind, or it is named."""
    kinds = field_kinds()
    assert set(kinds) == set(UNIT_FIELDS)
    assert set(kinds.values()) == set(KINDS)  # every kind is in use
    assert kinds["enabled"] == "bool" and kinds["weight"] == "number" and kinds["model"] == "text"
    assert kinds["layer_weights"] == "numbers" and kinds["more_images"] == "files" and kinds["mask"] == "mask"


@pytest.mark.parametrize("first", ["hello", 42, 1, None, 0.0, []])
def test_the_first_slot_must_be_the_accordion_switch(first):
    with pytest.raises(
        IPAdapterError, match="first argument is the accordion's on/off switch and must be true or false"
    ):
        parse_script_args([first])


@pytest.mark.parametrize("name", UNIT_FIELDS)
def test_a_wrong_type_in_any_unit_slot_names_the_slot(name):
    kind = field_kinds()[name]
    args = unit_args(PLUS)
    position = 1 + len(UNIT_FIELDS) + UNIT_FIELDS.index(name)  # unit 2: untouched, so only the type fails
    args[position] = WRONG[kind]
    with pytest.raises(IPAdapterError) as caught:
        parse_script_args(args)
    text = str(caught.value)
    assert f"positional argument {position} (unit 2 '{name}') must be {KINDS[kind][1]}" in text
    assert "GET /ipadapter/v1/schema" in text


@pytest.mark.parametrize("name", UNIT_FIELDS)
def test_right_types_pass(name):
    kind = field_kinds()[name]
    args = unit_args(PLUS)
    args[1 + len(UNIT_FIELDS) + UNIT_FIELDS.index(name)] = RIGHT[kind]
    assert [n for n, _ in parse_script_args(args)] == [1]


def test_the_accordion_toggles_after_the_units_are_checked():
    args = [*unit_args(PLUS), True, "no"]
    with pytest.raises(IPAdapterError, match=r"\('show_faces'\) must be true or false"):
        parse_script_args(args)
    assert parse_script_args([*unit_args(PLUS), True, False])[0][1].attention_map is True


def test_ui_values_and_numpy_booleans_pass():
    import numpy as np

    args = unit_args(PLUS)
    args[0] = np.bool_(True)
    args[1 + UNIT_FIELDS.index("weight")] = np.float32(0.25)
    args[1 + len(UNIT_FIELDS) + UNIT_FIELDS.index("image")] = np.zeros((8, 8, 3), np.uint8)  # unit 2, unticked
    args[1 + UNIT_FIELDS.index("image")] = Image.new("RGB", (8, 8))
    assert parse_script_args(args)[0][1].weight == 0.25


@torch.no_grad()
@pytest.mark.parametrize(("args", "detail"), [
    (["hello"], "first argument is the accordion's on/off switch"),
    ([42], "first argument is the accordion's on/off switch"),
    ([True, True, None, None, "tiny-plus", "auto", "0.5"], "positional argument 6 (unit 1 'weight') must be a number"),
])  # fmt: skip
def test_through_the_api_they_are_a_422_and_nothing_is_generated(webui, args, detail):
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, args, job(webui.model, is_api=True))
    assert caught.value.status_code == 422 and detail in caught.value.detail
    plain = run_job(webui.script, [False], job(webui.model, is_api=True))  # and the next request works
    assert plain.shape[0] == 1
