"""The A1111 script on the WebUI's own ldm UNet, through doubles of the ``modules`` API.

The UNet is stable-diffusion-sdkit's ``ldm`` UNetModel (attention code byte-identical to what
A1111 runs) in a tiny SD1-topology config. The doubles (tests/doubles) mirror A1111 1.10.1's
script-hook order, ``on_cfg_denoiser`` and the CFG denoiser's row batching.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ldm.modules.attention import CrossAttention
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from modules import script_callbacks, shared
from PIL import Image

from ipadapter_ext.core.attention import ImageKV
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.formats import save_adapter_tensors
from ipadapter_ext.core.hooks import Attn2Hooks
from ipadapter_ext.host import a1111
from tests.doubles.webui_sampling import Processing, run_job
from tests.factories import adapter_shapes, adapter_tensors
from tests.test_encoder import _save, _tiny_model

CTX = 48
REPO = Path(__file__).resolve().parents[1]


def tiny_unet(seed: int = 0, context_dim: int = CTX) -> UNetModel:
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=context_dim, legacy=False,
    ).eval()  # fmt: skip
    for m in unet.modules():  # ldm zero-initialises output layers, which would hide attention changes
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.reset_parameters()
    return unet.requires_grad_(False)


def sd_model(unet: UNetModel) -> SimpleNamespace:
    return SimpleNamespace(model=SimpleNamespace(diffusion_model=unet), is_sdxl=False, is_sd2=False)


def attn2_widths(unet: UNetModel) -> tuple[int, ...]:
    return a1111.unet_layout(sd_model(unet))[2].attn2_widths


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """Fresh doubles, model folders with tiny files, and the script loaded as the WebUI loads it."""
    shared.reset()
    script_callbacks.callbacks.clear()
    a1111._EngineHolder.reset()
    import modules.paths_internal as paths_internal

    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "models"))
    unet = tiny_unet()
    widths = attn2_widths(unet)
    adapters = tmp_path / "models" / "ipadapter"
    adapters.mkdir(parents=True)
    (tmp_path / "models" / "clip_vision").mkdir()
    shapes = adapter_shapes("resampler", CTX, widths, 128, tokens=4, res_dim=32, inner=64)
    save_adapter_tensors(adapter_tensors(shapes, seed=1), adapters / "tiny-plus.safetensors")
    save_adapter_tensors(adapter_tensors(adapter_shapes("base", CTX, widths, 40), seed=2), adapters / "tiny-base.bin")
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("base", 64, widths, 40), seed=3), adapters / "tiny-xl.safetensors"
    )
    _save(_tiny_model(seed=4), tmp_path / "models" / "clip_vision" / "tiny-clip.safetensors")
    spec = importlib.util.spec_from_file_location("ipadapter", REPO / "scripts" / "ipadapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield SimpleNamespace(script=module.IPAdapterScript(), unet=unet, model=sd_model(unet))
    a1111.sweep()


def image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy())


def unit_args(*units: dict, enabled: bool = True) -> list:
    """Script args in the UI layout: [accordion, (enabled, image, more, model, encoder, weight, start, end, crop) × 3]."""
    args: list = [enabled]
    for i in range(3):
        u = {"enabled": False, "image": None, "more": None, "model": "None", "encoder": "auto", "weight": 1.0,
             "start": 0.0, "end": 1.0, "crop": "center"}  # fmt: skip
        if i < len(units):
            u.update({"enabled": True, **units[i]})
        args += [
            u["enabled"],
            u["image"],
            u["more"],
            u["model"],
            u["encoder"],
            u["weight"],
            u["start"],
            u["end"],
            u["crop"],
        ]
    return args


def job(model, repeats=(1,), cond_tokens=77, **kw) -> Processing:
    g = torch.Generator().manual_seed(7)
    cond = torch.randn(sum(repeats), cond_tokens, CTX, generator=g)
    uncond = torch.randn(len(repeats), 77, CTX, generator=g)
    return Processing(sd_model=model, cond=cond, uncond=uncond, repeats=list(repeats), **kw)


PLUS = {"image": image(1), "model": "tiny-plus", "weight": 0.8}


def no_hooks_left(unet) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


@torch.no_grad()
def test_weight_zero_is_bit_identical_and_weight_changes_the_image(webui, capsys):
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    zero = run_job(webui.script, unit_args({**PLUS, "weight": 0.0}), job(webui.model))
    assert torch.equal(zero, baseline)
    one = run_job(webui.script, unit_args(PLUS), job(webui.model))
    other = run_job(webui.script, unit_args({**PLUS, "image": image(2)}), job(webui.model))
    assert not torch.allclose(one, baseline) and not torch.allclose(one, other)
    assert no_hooks_left(webui.unet)
    after = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert torch.equal(after, baseline)
    out = capsys.readouterr().out
    assert (
        "IP-Adapter: unit 1 · IP-Adapter Plus · SD1.5-shaped (context 48) · tiny-plus + tiny-clip · 16 layers · "
        "4 tokens · weight 0.8 · steps 0%–100%"
    ) in out


def _reference_check(webui, p: Processing, requests: list[UnitRequest], unet=None, calls=None):
    """Every UNet call's rows equal running each row alone with its own cond/uncond tokens."""
    unet = unet or webui.unet
    model = sd_model(unet)
    _, modules, signature = a1111.unet_layout(model)
    ref_job = a1111.engine().prepare(requests, signature, a1111.placement(model, unet))
    n_cond = sum(p.repeats)
    calls = calls if calls is not None else [c for s in p.samplers for c in s.denoiser.calls]
    assert calls
    kv = [unit.kv.kv for unit in ref_job.units]  # per unit, per layer: (K, V) with row 0 uncond, row 1 cond
    weights = [unit.weight for unit in ref_job.units]
    current = {"row": 0}

    def provider(layer, _q, _ctx):  # independent of Job's layout tracking
        r = current["row"]
        return [ImageKV(k[layer][0][r : r + 1], k[layer][1][r : r + 1], w) for k, w in zip(kv, weights, strict=True)]

    with Attn2Hooks(modules, provider):
        for call in calls:
            for i, row in enumerate(call.rows):
                current["row"] = 1 if row < n_cond else 0
                expected = unet(call.x[i : i + 1], call.timesteps[i : i + 1], context=call.context[i : i + 1])
                torch.testing.assert_close(call.out[i : i + 1], expected, atol=2e-4, rtol=1e-4)


CFG_MODES = {
    "batched": ({}, {}),
    "batch_cond_uncond_off": ({"batch_cond_uncond": False}, {}),
    "skip_uncond_steps": ({}, {"skip_uncond_steps": {1}}),
    "and_prompts": ({}, {"repeats": (2, 1)}),
    "and_prompts_unbatched": ({"batch_cond_uncond": False}, {"repeats": (2, 1)}),
    "batch_size_2": ({}, {"repeats": (1, 1)}),
    "token_lengths_differ": ({}, {"cond_tokens": 154}),
    "token_lengths_differ_unbatched": ({"batch_cond_uncond": False}, {"cond_tokens": 154, "repeats": (1, 1)}),
    "img2img": ({}, {"img2img": True}),
    "hires": ({}, {"enable_hr": True}),
}


@torch.no_grad()
@pytest.mark.parametrize("mode", list(CFG_MODES))
def test_cfg_rows_see_the_right_tokens(webui, mode):
    options, kwargs = CFG_MODES[mode]
    for key, value in options.items():
        setattr(shared.opts, key, value)
    p = job(webui.model, **kwargs)
    errors: list[str] = []
    run_job(webui.script, unit_args(PLUS), p, errors)
    assert not errors
    requests = [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)]
    _reference_check(webui, p, requests)
    # the uncond rows really differ from the cond rows' treatment: a swapped layout is caught
    assert no_hooks_left(webui.unet)


@torch.no_grad()
def test_start_end_schedule_gates_by_progress(webui):
    base = job(webui.model, steps=3)
    run_job(webui.script, unit_args(enabled=False), base)
    late = job(webui.model, steps=3)
    run_job(webui.script, unit_args({**PLUS, "start": 0.6}), late)
    b, c = base.samplers[0].denoiser.calls, late.samplers[0].denoiser.calls
    assert torch.equal(b[0].out, c[0].out) and torch.equal(b[1].out, c[1].out)  # steps 0 and 1/3: off
    assert not torch.allclose(b[2].x, c[2].x) or not torch.allclose(b[2].out, c[2].out)  # step 2/3: on


@torch.no_grad()
@pytest.mark.parametrize("where", ["unet", "denoiser"])
def test_exception_or_interrupt_mid_sampling_leaves_no_hook(webui, where):
    calls = {"n": 0}

    def explode(*_a, **_k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("interrupted")

    if where == "unet":
        handle = webui.unet.register_forward_pre_hook(explode)
    else:
        script_callbacks.on_cfg_denoiser(explode)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_job(webui.script, unit_args(PLUS), job(webui.model))
    if where == "unet":
        handle.remove()
    else:
        script_callbacks.callbacks["cfg_denoiser"].pop()
    assert no_hooks_left(webui.unet)
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert torch.equal(baseline, run_job(webui.script, unit_args({**PLUS, "weight": 0}), job(webui.model)))


def _counting_sdp_forward(self, x, context=None, mask=None, **kwargs):
    seen.append("sdp")
    context = x if context is None else context  # attn1 is self-attention
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, _ = q.shape
    qh, kh, vh = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, -1)
    return self.to_out[1](self.to_out[0](out))


seen: list[str] = []


@torch.no_grad()
def test_follows_an_optimization_switched_between_generations(webui, monkeypatch):
    stock = run_job(webui.script, unit_args(PLUS), job(webui.model))
    monkeypatch.setattr(CrossAttention, "forward", _counting_sdp_forward)  # like redo_hijack
    seen.clear()
    p = job(webui.model)
    switched = run_job(webui.script, unit_args(PLUS), p)
    assert len(seen) >= 16 * 3  # every attention call went through the new forward
    torch.testing.assert_close(switched, stock, atol=1e-4, rtol=1e-4)
    _reference_check(webui, p, [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)])


@torch.no_grad()
@pytest.mark.parametrize(
    "unit,message",
    [
        ({"image": None, "model": "tiny-plus"}, "unit 1: no reference image"),
        ({"model": "None", "image": image(1)}, "unit 1: no model selected"),
        (
            {"model": "tiny-xl", "image": image(1)},
            "unit 1: 'tiny-xl' .*expects a text context 64 wide; the loaded SD1.5 checkpoint's is 48",
        ),
        ({"model": "tiny-base", "image": image(1), "start": 0.8, "end": 0.2}, "start \\(0.8\\) is after end"),
    ],
)
def test_a_unit_that_cannot_apply_is_an_error_not_a_silent_no_op(webui, unit, message):
    with pytest.raises(IPAdapterError, match=message):
        run_job(webui.script, unit_args(unit), job(webui.model))
    assert no_hooks_left(webui.unet)
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert torch.isfinite(baseline).all()


@torch.no_grad()
def test_two_units_and_second_unit_numbering(webui):
    single = run_job(webui.script, unit_args(PLUS), job(webui.model))
    base_unit = {"image": image(3), "model": "tiny-base", "weight": 0.5}
    both = run_job(webui.script, unit_args(PLUS, base_unit), job(webui.model))
    assert not torch.allclose(single, both)
    args = unit_args(PLUS, {"image": None, "model": "tiny-base"})
    with pytest.raises(IPAdapterError, match="unit 2: no reference image"):
        run_job(webui.script, args, job(webui.model))


@torch.no_grad()
def test_refiner_switch_follows_a_fitting_model_and_skips_another(webui, capsys):
    fitting = sd_model(tiny_unet(seed=5))
    p = job(webui.model, steps=3, switch_model_at={0}, refiner=fitting)
    run_job(webui.script, unit_args(PLUS), p)
    calls = p.samplers[0].denoiser.calls
    _reference_check(
        webui, p, [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)], fitting.model.diffusion_model, calls[1:]
    )
    assert "applied to the refiner" in capsys.readouterr().out
    other = sd_model(tiny_unet(seed=6, context_dim=64))  # a refiner the adapter does not fit
    ctx64 = torch.randn(1, 77, 64)

    def refiner_conds(params):  # after the switch the refiner's own (64-wide) conds are used
        if shared.sd_model is other:
            params.text_cond, params.text_uncond = ctx64, ctx64

    script_callbacks.on_cfg_denoiser(refiner_conds)
    try:
        run_job(webui.script, unit_args(PLUS), job(webui.model, steps=2, switch_model_at={0}, refiner=other))
    finally:
        script_callbacks.callbacks["cfg_denoiser"].pop()
    assert "not applied after the switch to SD1.5" in capsys.readouterr().out
    assert no_hooks_left(other.model.diffusion_model) and no_hooks_left(webui.unet)


def test_ui_builds_under_gradio_3_with_schema_defaults(webui):
    import gradio as gr

    from ipadapter_ext.schema import DEFAULTS

    shared.opts.ipadapter_units = 2
    with gr.Blocks():
        inputs = webui.script.ui(False)
    assert gr.__version__.startswith("3.41")
    assert len(inputs) == 1 + 2 * 9
    enabled, u1 = inputs[0], inputs[1:10]
    assert enabled.value is False
    assert u1[0].value is True and inputs[10].value is False  # unit 1 on, unit 2 off
    assert u1[3].choices and "tiny-plus" in [c if isinstance(c, str) else c[0] for c in u1[3].choices]
    assert u1[4].value == DEFAULTS.encoder and u1[5].value == DEFAULTS.weight
    assert (u1[6].value, u1[7].value, u1[8].value) == (DEFAULTS.start, DEFAULTS.end, DEFAULTS.crop.value)
    assert enabled.elem_id == "script_txt2img_ipadapter_enabled"


@torch.no_grad()
def test_checkpoint_change_between_generations(webui):
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    other = sd_model(tiny_unet(seed=8))
    script_callbacks.model_loaded_callback(other)  # the WebUI loads another checkpoint
    p = job(other)
    run_job(webui.script, unit_args(PLUS), p)
    assert no_hooks_left(webui.unet) and no_hooks_left(other.model.diffusion_model)
    _reference_check(webui, p, [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)], other.model.diffusion_model)


@torch.no_grad()
@pytest.mark.parametrize("lowmem", [False, True])
def test_encoder_offload_under_medvram(webui, monkeypatch, lowmem):
    from ipadapter_ext.core.encoder import ClipVisionEncoder

    moves: list[str] = []
    original = ClipVisionEncoder.to

    def record(self, device):
        moves.append(str(device))
        return original(self, device)

    monkeypatch.setattr(ClipVisionEncoder, "to", record)
    shared.cmd_opts.medvram = lowmem
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    # one move onto the UNet's device (the CPU here) to encode, and with --medvram one back off it
    assert moves == (["cpu", "cpu"] if lowmem else ["cpu"])


@torch.no_grad()
def test_kv_take_the_unet_dtype(webui):
    _, _, signature = a1111.unet_layout(webui.model)
    place = a1111.Placement(device=torch.device("cpu"), dtype=torch.bfloat16)
    prepared = a1111.engine().prepare([UnitRequest(1, [PLUS["image"]], "tiny-plus")], signature, place)
    k, v = prepared.units[0].kv.kv[0]
    assert k.dtype == v.dtype == torch.bfloat16 and k.device.type == "cpu"


def test_settings_section_registers_once_with_defaults(webui):
    for _name, callback in script_callbacks.callbacks["ui_settings"]:
        callback()
    labels = shared.opts.data_labels
    assert {"ipadapter_units", "ipadapter_extra_folders", "ipadapter_cache_size", "ipadapter_offload_encoder",
            "ipadapter_hires"} <= set(labels)  # fmt: skip
    assert all(
        info.section == ("ipadapter", "IP-Adapter") for key, info in labels.items() if key.startswith("ipadapter")
    )
    assert shared.opts.ipadapter_units == 3 and shared.opts.ipadapter_hires is True
    assert len(script_callbacks.callbacks["cfg_denoiser"]) == 1  # registered once, at import


@torch.no_grad()
def test_hires_pass_can_be_excluded(webui, capsys):
    shared.opts.ipadapter_hires = False
    p = job(webui.model, enable_hr=True)
    run_job(webui.script, unit_args(PLUS), p)
    base = job(webui.model, enable_hr=True)
    run_job(webui.script, unit_args(enabled=False), base)
    hr, hr_base = p.samplers[1].denoiser.calls, base.samplers[1].denoiser.calls
    assert not torch.equal(hr[0].x, hr_base[0].x)  # the first pass had the image prompt
    for call in hr:  # the hires pass runs without it: equal to the UNet alone on the same inputs
        torch.testing.assert_close(call.out, webui.unet(call.x, call.timesteps, context=call.context))
    assert "not applied on the hires pass" in capsys.readouterr().out


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
    pasted = {}
    for component, key in webui.script.infotext_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is not None:
            pasted[component.elem_id.removeprefix("script_txt2img_ipadapter_")] = value
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
    for _name, callback in script_callbacks.callbacks["ui_settings"]:
        callback()
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
