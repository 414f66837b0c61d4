"""The precise weight types on the WebUI's own ldm UNet (tiny SD1 topology), through the A1111 and
Forge doubles: the "negative" blocks' term lands on the uncond rows only, in every batching mode.

``composition precise`` at weight 0 with a boost isolates the negative blocks: the composition
layers add nothing, every other layer moves the reference to the uncond rows and gives the cond
rows zero K/V. So in every UNet call the cond rows must equal the same call without any hook bit
for bit, and the uncond rows must change.
"""

from __future__ import annotations

import pytest
import torch
from modules import shared

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111
from tests.a1111_env import PLUS, job, no_hooks_left, run_job, sd_model, unit_args
from tests.test_a1111 import CFG_MODES

NEGATIVE_ONLY = {**PLUS, "weight": 0.0, "weight_type": "composition precise", "composition_boost": 0.6}


def _set_options(options: dict) -> None:
    for key, value in options.items():
        setattr(shared.opts, key, value)


#: precise style transfer at weight 0 with a style boost: only the layout layers, on uncond rows.
STYLE_NEGATIVE_ONLY = {**PLUS, "weight": 0.0, "weight_type": "precise style transfer", "style_boost": 1.5}
CASES = [pytest.param(NEGATIVE_ONLY, mode, id=f"composition-{mode}") for mode in CFG_MODES] + [
    pytest.param(STYLE_NEGATIVE_ONLY, mode, id=f"style-{mode}")
    for mode in ("batched", "batch_cond_uncond_off", "and_prompts", "token_lengths_differ_unbatched")
]


@torch.no_grad()
@pytest.mark.parametrize("unit,mode", CASES)
def test_the_negative_blocks_act_on_uncond_rows_only(webui, unit, mode):
    options, kwargs = CFG_MODES[mode]
    _set_options(options)
    p = job(webui.model, **kwargs)
    errors: list[str] = []
    run_job(webui.script, unit_args(unit), p, errors)
    assert not errors
    n_cond = sum(p.repeats)
    calls = [c for s in p.samplers for c in s.denoiser.calls]
    changed = 0
    for call in calls:
        plain = webui.unet(call.x, call.timesteps, context=call.context)  # the same call, no hooks
        for i, row in enumerate(call.rows):
            if row < n_cond:
                assert torch.equal(call.out[i], plain[i]), (mode, row)  # cond rows: bit for bit
            else:
                assert not torch.allclose(call.out[i], plain[i]), (mode, row)  # uncond rows: the reference
                changed += 1
    skipped = {"skip_uncond_steps"}
    assert changed or mode in skipped
    assert no_hooks_left(webui.unet)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["batched", "batch_cond_uncond_off", "and_prompts", "token_lengths_differ"])
def test_composition_precise_rows_equal_each_row_alone(webui, mode):
    """Weight and boost both on: each row equals that row run alone, with the composition layers
    taking cond/uncond as usual and every other layer the reference on uncond rows only."""
    options, kwargs = CFG_MODES[mode]
    _set_options(options)
    p = job(webui.model, **kwargs)
    unit = {**PLUS, "weight": 0.8, "weight_type": "composition precise", "composition_boost": 0.5}
    run_job(webui.script, unit_args(unit), p)
    model = sd_model(webui.unet)
    _, modules, signature = a1111.unet_layout(model)
    req = UnitRequest(1, [PLUS["image"]], "tiny-plus", weight=0.8, weight_type="composition precise",
                      composition_boost=0.5)  # fmt: skip
    (ref,) = a1111.engine().prepare([req], signature, a1111.placement(model, webui.unet)).units
    layout_t = signature.transformer_index
    kv = ref.kv.kv
    current = {"cond": True}

    def provider(layer, _q, _ctx):  # independent of the Job's row tracking
        t = layout_t[layer]
        negative = t not in (4, 5)  # SD1.x's layout transformers keep cond/uncond
        k, v = kv[layer]
        row = (2 if current["cond"] else 1) if negative else (1 if current["cond"] else 0)
        return [ImageKV(k[row : row + 1], v[row : row + 1], ref.layer_weights[layer])]

    n_cond = sum(p.repeats)
    with Attn2Hooks(modules, provider):
        for call in [c for s in p.samplers for c in s.denoiser.calls]:
            for i, row in enumerate(call.rows):
                current["cond"] = row < n_cond
                expected = webui.unet(call.x[i : i + 1], call.timesteps[i : i + 1], context=call.context[i : i + 1])
                torch.testing.assert_close(call.out[i : i + 1], expected, atol=2e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["composition precise", "precise style transfer"])
def test_weight_zero_is_no_unit_bit_for_bit(webui, kind):
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    zero = {**PLUS, "weight": 0.0, "weight_type": kind, "composition_boost": 0.0, "style_boost": 0.0}
    assert torch.equal(run_job(webui.script, unit_args(zero), job(webui.model)), baseline)
    boosted = {**PLUS, "weight": 0.8, "weight_type": kind, "composition_boost": 0.4, "style_boost": 1.5}
    plain = {**boosted, "composition_boost": 0.0, "style_boost": 0.0}
    a = run_job(webui.script, unit_args(boosted), job(webui.model))
    b = run_job(webui.script, unit_args(plain), job(webui.model))
    assert not torch.allclose(a, baseline) and not torch.allclose(a, b)  # the boost changes the image


@torch.no_grad()
def test_composition_precise_is_composition_with_a_zero_boost(webui):
    """The composition boost's default (the reference's node default) adds no negative term."""
    precise = run_job(webui.script, unit_args({**PLUS, "weight_type": "composition precise"}), job(webui.model))
    plain = run_job(webui.script, unit_args({**PLUS, "weight_type": "composition"}), job(webui.model))
    assert torch.equal(precise, plain)


@torch.no_grad()
def test_the_console_says_when_the_precise_part_does_nothing(webui, capsys):
    run_job(webui.script, unit_args(NEGATIVE_ONLY), job(webui.model, skip_uncond_steps={1, 2}))
    out = capsys.readouterr().out
    assert "unit 1 ('composition precise') moves the reference to the negative (uncond) side" in out
    assert "skipped the uncond pass on 2 of 3 steps" in out
    p = job(webui.model)
    p.cfg_scale = 1.0
    run_job(webui.script, unit_args(NEGATIVE_ONLY), p)
    assert "at CFG scale 1 the uncond has no effect" in capsys.readouterr().out
    run_job(webui.script, unit_args({**PLUS, "weight_type": "composition"}), job(webui.model, skip_uncond_steps={1}))
    run_job(webui.script, unit_args(NEGATIVE_ONLY), job(webui.model))
    assert "negative (uncond) side" not in capsys.readouterr().out  # not precise, or nothing skipped


def test_precise_types_need_a_known_unet_layout(webui):
    from ipadapter_ext.core.attend.weights import transformer_weights

    with pytest.raises(IPAdapterError, match="'composition precise' needs an SD1.x"):
        transformer_weights("composition precise", 1.0, ("input", "middle", "output"))
