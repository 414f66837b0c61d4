"""A real WebUI over HTTP with an SDXL checkpoint: A1111's sgm path, next to the SD1.5 session.

Opt-in like the rest of tests/e2e (``WEBUI_URL`` or ``WEBUI_ROOT``, see ``conftest.py``). Every
request here picks the SDXL checkpoint itself (``override_settings`` with
``override_settings_restore_afterwards``), so the server's own checkpoint stays SD1.5 for the other
files; live previews are off in these requests (A1111 would fetch ``vaeapprox-sdxl.pt``).

``WEBUI_ROOT``: the tiny SDXL and its adapter of ``sdxl.py`` (written on A1111 unless
``WEBUI_E2E_SDXL=0``), or on the Forge families a full-size SDXL in ``models/Stable-diffusion``
with an adapter written for it (``sdxl.py``). ``WEBUI_URL``: ``WEBUI_SDXL_CKPT`` (a checkpoint
title, name or file name; default the tiny one's file) and ``WEBUI_SDXL_IPADAPTER_MODEL`` (default
the tiny one's adapter); skipped when the server lists no such checkpoint or adapter.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePath

import pytest

from . import sdxl as tiny_sdxl
from .conftest import HOST_DEFECT, WebUI
from .test_webui_http import baseline, generate, same_pixels, txt2img_payload, unit, with_units

__all__ = ["baseline"]  # the session fixture, shared with test_webui_http


@dataclass(frozen=True)
class Sdxl:
    title: str  # the checkpoint as override_settings names it
    adapter: str  # the SDXL IP-Adapter model's name

    def payload(self, **overrides) -> dict:
        settings = {"sd_model_checkpoint": self.title, **tiny_sdxl.NO_APPROX_PREVIEW}
        return txt2img_payload(override_settings=settings, override_settings_restore_afterwards=True, **overrides)


def _models(webui: WebUI, refresh: bool = False) -> list[dict]:
    answer = webui.client.get("/ipadapter/v1/models" + ("?refresh=true" if refresh else ""))
    assert answer.status == 200, answer.text
    return answer.json()["models"]


def _skip_or_fail(webui: WebUI, what: str) -> None:
    if webui.mode == "root" and webui.extras is not None and webui.extras.sdxl is not None:
        pytest.fail(f"the SDXL files were written before the start, but {what}")
    why = webui.extras.sdxl_skipped if webui.extras is not None and webui.extras.sdxl_skipped else ""
    hint = (
        f"no SDXL in this session ({why})"
        if why
        else "set WEBUI_SDXL_CKPT and WEBUI_SDXL_IPADAPTER_MODEL to an SDXL checkpoint and adapter the server has"
    )
    pytest.skip(f"no SDXL to test: {what}; {hint}")


def _checkpoint_title(webui: WebUI, wanted: str) -> str:
    """The listed title of checkpoint ``wanted``. A host whose ``/sdapi/v1/sd-models`` fails (ersatzForge
    fca12a2: its CheckpointInfo has no ``model_name``) is flagged, and the file name, which
    ``override_settings`` accepts as well, is used when the session wrote this checkpoint's files."""
    answer = webui.client.get("/sdapi/v1/sd-models")
    if answer.status != 200 and webui.extras is not None and webui.extras.sdxl is not None:
        warnings.warn(
            f"{HOST_DEFECT}: GET /sdapi/v1/sd-models answered {answer.status} ({answer.text[:200]}); "
            f"the SDXL checkpoint is named by its file name {wanted!r}",
            stacklevel=2,
        )
        return wanted
    assert answer.status == 200, answer.text
    listed = answer.json()
    found = [
        c for c in listed if wanted in (c.get("title"), c.get("model_name"), PurePath(c.get("filename") or "").name)
    ]
    if not found:
        _skip_or_fail(webui, f"the server lists no checkpoint {wanted!r} (it has {[c.get('title') for c in listed]})")
    return found[0]["title"]


def _enough_memory(files: tiny_sdxl.SdxlFiles | None) -> None:
    """A full-size SDXL takes about 14 GB of RAM on CPU in fp32: skip, saying so, when the machine
    has less available than ``WEBUI_SDXL_MIN_FREE_GB`` (default 12) before it is loaded."""
    if files is None or not files.full_size:
        return
    need = float(os.environ.get("WEBUI_SDXL_MIN_FREE_GB", "12"))
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available = int(meminfo["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        return
    if available < need:
        pytest.skip(
            f"the full-size SDXL {files.checkpoint} needs about 14 GB of RAM on CPU; {available:.1f} GB is available "
            f"(WEBUI_SDXL_MIN_FREE_GB={need:g})"
        )


@pytest.fixture(scope="module")
def sdxl(webui: WebUI, request: pytest.FixtureRequest) -> Sdxl:
    """The SDXL checkpoint and adapter, found with GETs only (a skip costs no generation). Then
    the SD1.5 ``model`` and ``baseline`` are taken, before the first SDXL request of the session."""
    files = webui.extras.sdxl if webui.extras is not None else None
    wanted = os.environ.get("WEBUI_SDXL_CKPT") or (files.checkpoint if files else tiny_sdxl.CHECKPOINT_FILE)
    title = _checkpoint_title(webui, wanted)
    adapter_wanted = os.environ.get("WEBUI_SDXL_IPADAPTER_MODEL")
    adapter_file = files.adapter if files else tiny_sdxl.ADAPTER_FILE
    models = _models(webui, refresh=True)
    if adapter_wanted:
        adapters = [m for m in models if m["name"] == adapter_wanted]
    else:
        adapters = [m for m in models if m["file"] == adapter_file]
    if not adapters:
        _skip_or_fail(webui, f"the server lists no SDXL IP-Adapter {adapter_wanted or adapter_file!r}")
    assert adapters[0]["error"] is None, adapters[0]
    _enough_memory(files)
    request.getfixturevalue("model")
    request.getfixturevalue("baseline")
    return Sdxl(title, adapters[0]["name"])


@pytest.fixture(scope="module")
def sdxl_baseline(webui: WebUI, sdxl: Sdxl) -> str:
    """SDXL txt2img without a unit, before any SDXL request with one."""
    return generate(webui.client, sdxl.payload())[0]


def _entry(models: list[dict], name: str) -> dict:
    return next(m for m in models if m["name"] == name)


def test_models_route_follows_the_loaded_checkpoint(webui: WebUI, sdxl: Sdxl, model: str):
    generate(webui.client, txt2img_payload(steps=1))  # the server's own (SD1.5) checkpoint
    models = _models(webui)
    xl, sd15 = _entry(models, sdxl.adapter), _entry(models, model)
    assert sd15["compatible"] is True, sd15
    assert xl["compatible"] is False and "SDXL" in xl["reason"], xl
    assert "SDXL" in xl["base"], xl

    # a request with the override leaves the SDXL model loaded (only the option is restored)
    generate(webui.client, sdxl.payload(steps=1))
    models = _models(webui)
    xl, sd15 = _entry(models, sdxl.adapter), _entry(models, model)
    assert xl["compatible"] is True and xl["reason"] is None and xl["error"] is None, xl
    assert sd15["compatible"] is False, sd15
    assert "SDXL" in sd15["reason"] and sd15["base"] in sd15["reason"], sd15


def test_sd15_adapter_on_sdxl_is_a_422_naming_both_bases(webui: WebUI, sdxl: Sdxl, model: str, sdxl_baseline: str):
    base = _entry(_models(webui), model)["base"]
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(sdxl.payload(), unit(model)))
    assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
    detail = answer.json().get("detail")
    assert isinstance(detail, str) and "SDXL" in detail and base in detail, answer.text[:3000]
    assert same_pixels(generate(webui.client, sdxl.payload())[0], sdxl_baseline), "the refused unit left state behind"


def test_sdxl_unit_changes_the_image_and_is_deterministic(webui: WebUI, sdxl: Sdxl, sdxl_baseline: str):
    payload = with_units(sdxl.payload(), unit(sdxl.adapter))
    first = generate(webui.client, payload)[0]
    second = generate(webui.client, payload)[0]
    assert not same_pixels(first, sdxl_baseline), "the SDXL IP-Adapter unit did not change the image"
    assert first == second, "the same SDXL request twice gave different PNG bytes"


def test_sdxl_weight_zero_equals_the_baseline(webui: WebUI, sdxl: Sdxl, sdxl_baseline: str):
    image = generate(webui.client, with_units(sdxl.payload(), unit(sdxl.adapter, weight=0.0)))[0]
    assert same_pixels(image, sdxl_baseline)


def test_sdxl_request_without_unit_after_one_with_it_equals_the_baseline(webui: WebUI, sdxl: Sdxl, sdxl_baseline: str):
    generate(webui.client, with_units(sdxl.payload(), unit(sdxl.adapter)))
    after = generate(webui.client, sdxl.payload())[0]
    assert same_pixels(after, sdxl_baseline), "an SDXL unit's hooks or state leaked into the next request"


def test_back_on_sd15_the_baseline_and_a_unit_still_work(webui: WebUI, sdxl: Sdxl, model: str, baseline: str):
    generate(webui.client, with_units(sdxl.payload(), unit(sdxl.adapter)))  # SDXL loaded, with hooks
    plain = generate(webui.client, txt2img_payload())[0]  # reloads the server's SD1.5 checkpoint
    assert same_pixels(plain, baseline), "SD1.5 after SDXL differs from the SD1.5 baseline"
    image = generate(webui.client, with_units(txt2img_payload(), unit(model)))[0]
    assert not same_pixels(image, baseline), "the SD1.5 unit had no effect after the SDXL requests"


def test_sdxl_attention_map(webui: WebUI, sdxl: Sdxl):
    """SDXL's 70 cross-attention layers feed the map as SD1.5's 16 do; the image is unchanged."""
    plain = generate(webui.client, with_units(sdxl.payload(), unit(sdxl.adapter)))
    reply = webui.client.post("/sdapi/v1/txt2img", with_units(sdxl.payload(), unit(sdxl.adapter, attention_map=True)))
    assert reply.status == 200, reply.text[:3000]
    images, texts = reply.json()["images"], json.loads(reply.json()["info"])["infotexts"]
    assert len(images) == 2 and texts[1].startswith("IP-Adapter attention map: unit 1")
    assert same_pixels(images[0], plain[0])
