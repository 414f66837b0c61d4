"""The A1111 script on the WebUI's own ldm UNet, through doubles of the ``modules`` API.

The UNet is stable-diffusion-sdkit's ``ldm`` UNetModel (attention code byte-identical to what
A1111 runs) in a tiny SD1-topology config. The doubles (tests/doubles) mirror A1111 1.10.1's
script-hook order, ``on_cfg_denoiser`` and the CFG denoiser's row batching.
"""

from __future__ import annotations

import pytest
import torch
from ldm.modules.attention import CrossAttention
from modules import script_callbacks, shared

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111
from tests.a1111_env import (
    PLUS,
    image,
    job,
    no_hooks_left,
    reference_check,
    run_job,
    sd_model,
    tiny_unet,
    unit_args,
)


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
    reference_check(webui, p, requests)
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
    reference_check(webui, p, [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)])


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
    """The refiner switch of tests/doubles (``apply_refiner`` → ``reload_model_weights`` →
    ``model_loaded_callback``, at the top of the denoiser's forward): a refiner the adapter fits
    gets the unit in its steps; one it does not fit runs without it, with a console line."""
    from modules import sd_models

    fitting = sd_models.checkpoint("fitting-refiner", "v1-inference.yaml", lambda: tiny_unet(seed=5))
    p = job(webui.model, steps=3, refiner_checkpoint_info=fitting, refiner_switch_at=0.3)
    run_job(webui.script, unit_args(PLUS), p)
    calls = p.samplers[0].denoiser.calls
    refined = shared.sd_model.model.diffusion_model  # the same UNet object, with the refiner's weights
    assert refined is webui.unet and torch.equal(refined.out[2].weight, tiny_unet(seed=5).out[2].weight)
    requests = [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)]
    reference_check(webui, p, requests, refined, calls[1:])
    assert "applied to the refiner" in capsys.readouterr().out
    other = sd_models.checkpoint("other-refiner", "sd_xl_refiner.yaml", lambda: tiny_unet(seed=6, context_dim=64))
    ctx64 = torch.randn(1, 77, 64)
    p = job(sd_model(tiny_unet()), steps=2, refiner_checkpoint_info=other, refiner_switch_at=0.4)
    p.refiner_cond, p.refiner_uncond = ctx64, ctx64  # after the switch the refiner's own (64-wide) conds
    errors: list[str] = []
    run_job(webui.script, unit_args(PLUS), p, errors)
    assert not errors
    assert "not applied after the switch to SD1.5" in capsys.readouterr().out
    assert no_hooks_left(shared.sd_model.model.diffusion_model) and no_hooks_left(webui.unet)


@torch.no_grad()
def test_checkpoint_change_between_generations(webui):
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    other = sd_model(tiny_unet(seed=8))
    script_callbacks.model_loaded_callback(other)  # the WebUI loads another checkpoint
    p = job(other)
    run_job(webui.script, unit_args(PLUS), p)
    assert no_hooks_left(webui.unet) and no_hooks_left(other.model.diffusion_model)
    reference_check(webui, p, [UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8)], other.model.diffusion_model)


@torch.no_grad()
def test_kv_take_the_unet_dtype(webui):
    _, _, signature = a1111.unet_layout(webui.model)
    place = a1111.Placement(device=torch.device("cpu"), dtype=torch.bfloat16)
    prepared = a1111.engine().prepare([UnitRequest(1, [PLUS["image"]], "tiny-plus")], signature, place)
    k, v = prepared.units[0].kv.kv[0]
    assert k.dtype == v.dtype == torch.bfloat16 and k.device.type == "cpu"


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
def test_an_unexpected_failure_while_preparing_stops_the_generation_with_its_name(webui, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(a1111.engine(), "prepare", broken)
    with pytest.raises(IPAdapterError, match="IP-Adapter failed to prepare: RuntimeError: boom"):
        run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert no_hooks_left(webui.unet)
    monkeypatch.undo()
    assert run_job(webui.script, unit_args(PLUS), job(webui.model)) is not None


def test_loading_models_leaves_the_global_generator_alone(webui):
    """The WebUI seeds torch's global generator per generation and keeps drawing from it
    (ancestral samplers, img2img's VAE sample): a load on the first use of a model must not move
    it, or that generation would differ from the same seed afterwards."""
    from ipadapter_ext.core.engine import UnitRequest
    from tests.a1111_env import sd_model

    model = sd_model(webui.unet)
    _, _, signature = a1111.unet_layout(model)
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    job = a1111.engine().prepare(
        [UnitRequest(1, [image(1)], "tiny-plus")], signature, a1111.placement(model, webui.unet)
    )
    engine = a1111.engine()
    assert job.units and engine.adapters.loads == engine.encoders.loads == 1  # both were loaded just now
    assert torch.equal(torch.random.get_rng_state(), before)
