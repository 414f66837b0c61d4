"""The A1111 script's API path, infotext, settings, routes, downloads and UI (same environment)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from modules import script_callbacks, shared

from ipadapter_ext.host import a1111
from ipadapter_ext.ui.layout import UNIT_FIELDS
from tests.a1111_env import (
    PLUS,
    image,
    job,
    no_hooks_left,
    pasted_values,
    run_job,
    unit_args,
)


def test_ui_builds_under_gradio_3_with_schema_defaults(webui):
    import gradio as gr

    from ipadapter_ext.schema import DEFAULTS

    shared.opts.ipadapter_units = 2
    with gr.Blocks():
        inputs = webui.script.ui(False)
    assert gr.__version__.startswith("3.41")
    width = len(UNIT_FIELDS)
    assert len(inputs) == 1 + 2 * width + 2  # the accordion, the units, the map and face toggles
    assert inputs[-2].value is False and inputs[-2].elem_id == "script_txt2img_ipadapter_attention_map"
    assert inputs[-1].value is False and inputs[-1].elem_id == "script_txt2img_ipadapter_show_faces"
    enabled, u1 = inputs[0], dict(zip(UNIT_FIELDS, inputs[1 : 1 + width], strict=True))
    assert enabled.value is False
    assert u1["enabled"].value is True and inputs[1 + width].value is False  # unit 1 on, unit 2 off
    assert u1["model"].choices and "tiny-plus" in [c if isinstance(c, str) else c[0] for c in u1["model"].choices]
    for name in ("encoder", "weight", "start", "end", "crop", "weight_type", "composition_weight", "weight_mode",
                 "combine", "noise"):  # fmt: skip
        default = getattr(DEFAULTS, name)
        assert u1[name].value == getattr(default, "value", default), name
    assert u1["layer_weights"].value == "" and u1["image_weights"].value == "" and DEFAULTS.layer_weights is None
    assert u1["mask"].tool == "sketch" and u1["negative_image"].value is None
    assert enabled.elem_id == "script_txt2img_ipadapter_enabled"


def test_settings_section_registers_once_with_defaults(webui):
    # registered when the script loads (see test_api_only.py for why not in on_ui_settings)
    labels = shared.opts.data_labels
    assert {"ipadapter_units", "ipadapter_extra_folders", "ipadapter_cache_size", "ipadapter_offload_encoder",
            "ipadapter_hires"} <= set(labels)  # fmt: skip
    assert all(
        info.section == ("ipadapter", "IP-Adapter") for key, info in labels.items() if key.startswith("ipadapter")
    )
    assert shared.opts.ipadapter_units == 3 and shared.opts.ipadapter_hires is True
    assert len(script_callbacks.callbacks["cfg_denoiser"]) == 1  # registered once, at import


@torch.no_grad()
def test_api_units_equal_ui_units_and_errors_are_http_422(webui):
    import base64
    import io

    from fastapi import HTTPException

    buf = io.BytesIO()
    PLUS["image"].save(buf, format="PNG")
    api_unit = {"image": base64.b64encode(buf.getvalue()).decode(), "model": "tiny-plus", "weight": 0.8}
    ui = run_job(webui.script, unit_args(PLUS), job(webui.model))
    api = run_job(webui.script, [api_unit, *unit_args()[2:]], job(webui.model, is_api=True))
    assert torch.equal(ui, api)
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, [{**api_unit, "model": "tiny-xl"}], job(webui.model, is_api=True))
    assert caught.value.status_code == 422
    assert "expects a text context 64 wide" in caught.value.detail
    assert "Models that fit it: tiny-base, tiny-plus." in caught.value.detail
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, [{**api_unit, "model": "../tiny-plus"}], job(webui.model, is_api=True))
    assert "unknown IP-Adapter model '../tiny-plus'; available: tiny-base, tiny-plus, tiny-xl" in caught.value.detail
    assert no_hooks_left(webui.unet)
    assert torch.equal(run_job(webui.script, [api_unit], job(webui.model, is_api=True)), api)  # the next request works


@torch.no_grad()
def test_infotext_round_trip_restores_every_field_but_the_image(webui):
    import gradio as gr
    from modules import infotext_utils

    with gr.Blocks():
        webui.script.ui(False)
    base = {"image": image(3), "model": "tiny-base", "weight": -0.25, "start": 0.1, "end": 0.9, "crop": "pad"}
    p = job(webui.model)
    run_job(webui.script, unit_args({**PLUS, "more": None}, base), p)
    text = infotext_utils.create_infotext({"Steps": 3, **p.extra_generation_params})
    assert 'IP-Adapter 1: "model: tiny-plus [' in text and "IP-Adapter 2: " in text
    params = infotext_utils.parse_generation_parameters(text)
    pasted = pasted_values(webui.script, params, "script_txt2img_ipadapter_")
    assert pasted["enabled"] is True
    assert pasted["unit_1_enabled"] is True and pasted["unit_2_enabled"] is True and pasted["unit_3_enabled"] is False
    for n, unit in ((1, PLUS), (2, base)):
        assert pasted[f"unit_{n}_model"] == unit["model"]
        assert pasted[f"unit_{n}_weight"] == unit["weight"]
        assert pasted[f"unit_{n}_start"] == unit.get("start", 0.0) and pasted[f"unit_{n}_end"] == unit.get("end", 1.0)
        assert pasted[f"unit_{n}_crop"] == unit.get("crop", "center") and pasted[f"unit_{n}_encoder"] == "auto"
        assert "drop the reference image again" in pasted[f"unit_{n}_info"]
    assert "unit_1_image" not in pasted
    digest = (
        __import__("hashlib").sha256((Path(a1111.engine().registry.adapter("tiny-plus").path)).read_bytes()).hexdigest()
    )
    assert f"tiny-plus [{digest[:10]}]" in params["IP-Adapter 1"]
    # an infotext without IP-Adapter turns the accordion off when pasted
    other = infotext_utils.parse_generation_parameters("Steps: 3, Seed: 1")
    (enabled_key,) = [
        k for c, k in webui.script.infotext_fields if c.elem_id.endswith("_enabled") and "unit" not in c.elem_id
    ]
    assert enabled_key(other) is False


def test_routes_are_registered_on_app_started(webui):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(None, app)
    client = TestClient(app)
    assert client.get("/ipadapter/v1/version").json()["version"]
    models = {m["name"]: m for m in client.get("/ipadapter/v1/models").json()["models"]}
    assert models["tiny-plus"]["compatible"] is None  # no checkpoint loaded yet
    shared.sd_model = webui.model
    models = {m["name"]: m for m in client.get("/ipadapter/v1/models").json()["models"]}
    assert models["tiny-plus"]["compatible"] is True and models["tiny-xl"]["compatible"] is False


@torch.no_grad()
def test_encode_then_embeds_gives_the_same_image_as_the_image(webui):
    import base64
    import io

    from fastapi import FastAPI, HTTPException
    from fastapi.testclient import TestClient

    app = FastAPI()
    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(None, app)
    client = TestClient(app)
    shared.sd_model = webui.model
    buf = io.BytesIO()
    PLUS["image"].save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    answer = client.post("/ipadapter/v1/encode", json={"image": b64, "model": "tiny-plus"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["tokens"] == 4 and body["encoder"] == "tiny-clip"
    from_image = run_job(
        webui.script, [{"image": b64, "model": "tiny-plus", "weight": 0.8}], job(webui.model, is_api=True)
    )
    from_embeds = run_job(
        webui.script, [{"embeds": body["embeds"], "model": "tiny-plus", "weight": 0.8}], job(webui.model, is_api=True)
    )
    assert torch.equal(from_image, from_embeds)
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, [{"embeds": body["embeds"], "model": "tiny-base"}], job(webui.model, is_api=True))
    assert "embeds were made for model 'tiny-plus'" in caught.value.detail
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, [{"embeds": b64, "model": "tiny-plus"}], job(webui.model, is_api=True))
    assert "embeds: not a safetensors blob from /ipadapter/v1/encode" in caught.value.detail
    bad = client.post("/ipadapter/v1/encode", json={"image": "%%", "model": "tiny-plus"})
    assert bad.status_code == 422 and "encode, image: the image is not valid base64" in bad.json()["detail"]
    assert client.post("/ipadapter/v1/encode", json={"image": b64, "model": "x"}).status_code == 422


@torch.no_grad()
def test_default_weight_setting_is_shared_by_ui_and_api(webui):
    import base64
    import io

    import gradio as gr

    shared.opts.ipadapter_default_weight = 0.0
    with gr.Blocks():
        inputs = webui.script.ui(False)
    assert inputs[6].value == 0.0  # unit 1's weight slider starts at the setting
    buf = io.BytesIO()
    PLUS["image"].save(buf, format="PNG")
    unit = {"image": base64.b64encode(buf.getvalue()).decode(), "model": "tiny-plus"}
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert torch.equal(run_job(webui.script, [unit], job(webui.model, is_api=True)), baseline)  # weight 0 by setting
    explicit = run_job(webui.script, [{**unit, "weight": 1.0}], job(webui.model, is_api=True))
    assert not torch.allclose(explicit, baseline)  # an explicit weight wins over the setting


def test_download_button_reports_and_rescans(webui, monkeypatch):
    import gradio as gr

    import ipadapter_ext.download as dl

    with gr.Blocks():
        webui.script.ui(False)
    fetched = []

    def fake_download(model, dest):
        fetched.append((model.name, dest.name))
        if model.kind == "encoder":
            raise OSError("network unreachable")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / model.name).write_bytes((dest / "tiny-base.bin").read_bytes())
        return dest / model.name

    monkeypatch.setattr(dl, "download", fake_download)
    status = a1111.download_models(["ip-adapter_sd15.safetensors", "clip_vision_h.safetensors", "bogus"])
    assert fetched == [("ip-adapter_sd15.safetensors", "ipadapter"), ("clip_vision_h.safetensors", "clip_vision")]
    assert "✓ ip-adapter_sd15.safetensors → models/ipadapter" in status
    assert "✗ clip_vision_h.safetensors: network unreachable. Download it by hand into models/clip_vision" in status
    assert "✗ bogus: not an official model" in status
    assert "ip-adapter_sd15" in [e.name for e in a1111.engine().registry.adapters()]  # rescanned


def test_settings_changes_apply_without_restart(webui, tmp_path):
    labels = shared.opts.data_labels
    engine = a1111.engine()
    shared.opts.ipadapter_cache_size = 2
    labels["ipadapter_cache_size"].onchange()
    assert engine.embeddings.max_items == 2
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "moved.safetensors").write_bytes(
        (tmp_path / "models" / "ipadapter" / "tiny-plus.safetensors").read_bytes()
    )
    shared.opts.ipadapter_extra_folders = str(extra)
    labels["ipadapter_extra_folders"].onchange()
    assert a1111.engine() is not engine
    assert "moved" in [e.name for e in a1111.engine().registry.adapters() if e.info is not None]
