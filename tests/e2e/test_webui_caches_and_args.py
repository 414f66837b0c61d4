"""A real WebUI: the cache routes (``GET /ipadapter/v1/cache``, ``POST /cache/clear``) and strict
positional arguments (issue 24), over HTTP.

The WebUI copies a request's positional ``args`` over the script's UI defaults slot by slot, so a
short list leaves the rest as the UI has them; each slot of a wrong type must come back as a 422
naming it, for every kind of field, and a right list must generate with the unit.
"""

from __future__ import annotations

import pytest

from ipadapter_ext.ui.layout import UNIT_FIELDS
from ipadapter_ext.ui.positional import KINDS, field_kinds
from tests.ui_values import UI_VALUES

from .conftest import WebUI
from .test_webui_http import REFERENCE, generate, same_pixels, txt2img_payload, unit, with_units
from .webui import SCRIPT_TITLE

WRONG = {"bool": "yes", "number": "0.5", "text": 42, "numbers": {"a": 1}, "image": 42, "mask": 7.5, "files": "abc"}


def positional(model: str) -> list:
    """Unit 1 of the UI's argument list, set up with the reference and ``model``."""
    values = {**UI_VALUES, "enabled": True, "image": REFERENCE, "model": model, "weight": 0.8}
    return [True] + [values[name] for name in UNIT_FIELDS]


def post_args(webui: WebUI, args: list):
    return webui.client.post(
        "/sdapi/v1/txt2img", {**txt2img_payload(), "alwayson_scripts": {SCRIPT_TITLE: {"args": args}}}
    )


def test_a_right_positional_list_generates_with_the_unit(webui: WebUI, model: str):
    by_list = generate(
        webui.client, {**txt2img_payload(), "alwayson_scripts": {SCRIPT_TITLE: {"args": positional(model)}}}
    )
    by_object = generate(webui.client, with_units(txt2img_payload(), unit(model, 0.8)))
    plain = generate(webui.client, txt2img_payload())
    assert same_pixels(by_list[0], by_object[0]) and not same_pixels(by_list[0], plain[0])


@pytest.mark.parametrize("first", ["hello", 42])
def test_the_first_slot_must_be_a_boolean(webui: WebUI, first):
    answer = post_args(webui, [first])
    assert answer.status == 422, answer.text[:2000]
    assert "first argument is the accordion's on/off switch and must be true or false" in answer.json()["detail"]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_of_slot_refuses_a_wrong_type_by_name(webui: WebUI, model: str, kind: str):
    name = next(n for n, k in field_kinds().items() if k == kind)
    args = positional(model)
    args[1 + UNIT_FIELDS.index(name)] = WRONG[kind]
    answer = post_args(webui, args)
    assert answer.status == 422, answer.text[:2000]
    position = 1 + UNIT_FIELDS.index(name)
    assert f"positional argument {position} (unit 1 '{name}') must be {KINDS[kind][1]}" in answer.json()["detail"]


def test_cache_route_reports_and_clear_empties_without_changing_results(webui: WebUI, model: str):
    first = generate(webui.client, with_units(txt2img_payload(), unit(model)))[0]
    answer = webui.client.get("/ipadapter/v1/cache")
    assert answer.status == 200, answer.text
    caches = answer.json()["caches"]
    assert {"adapters", "encoders", "embeddings", "kv"} <= set(caches)
    assert caches["adapters"]["entries"] >= 1 and caches["adapters"]["bytes"] > 0
    assert caches["encoders"]["entries"] >= 1 and caches["embeddings"]["entries"] >= 1
    assert caches["kv"]["entries"] == 0  # no generation runs now: no K/V held
    assert all(c["max_entries"] is None or c["entries"] <= c["max_entries"] for c in caches.values())
    cleared = webui.client.post("/ipadapter/v1/cache/clear", {})
    assert cleared.status == 200, cleared.text
    after = cleared.json()["caches"]
    assert after["adapters"]["entries"] == after["encoders"]["entries"] == after["embeddings"]["entries"] == 0
    again = generate(webui.client, with_units(txt2img_payload(), unit(model)))[0]
    assert same_pixels(first, again)  # loaded and encoded again from nothing: the same image
