"""Reference craft on the Forge doubles (tests/doubles/forge_*.py, Forge dfdcbab6's patcher and
sampling contract, on the same ldm UNet and model files as the A1111 tests): the precise types'
negative blocks on uncond chunks only, one reference per batch image, tiles, and the console note
where Forge skips the uncond pass."""

from __future__ import annotations

import pytest
import torch

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.host import a1111
from tests.a1111_env import PLUS, image, sd_model, unit_args
from tests.doubles import forge_sampling
from tests.doubles.forge_backend import forge_unet_forward
from tests.doubles.forge_sampling import run_forge_job
from tests.test_forge import env  # noqa: F401 (env is a fixture)
from tests.test_forge import job as forge_job
from tests.test_forge import patched as forge_patched
from tests.test_reference_craft import WIDE, _b64

NEGATIVE_ONLY = {**PLUS, "weight": 0.0, "weight_type": "composition precise", "composition_boost": 0.6}


@torch.no_grad()
@pytest.mark.parametrize("batching", list(forge_sampling.BATCHINGS))
@pytest.mark.parametrize("batch", [1, 2])
def test_the_negative_blocks_act_on_uncond_chunks_only(env, batching, batch):  # noqa: F811
    p = forge_job(env, batch=batch, batching=batching)
    errors: list[str] = []
    run_forge_job(env.script, unit_args(NEGATIVE_ONLY), p, errors)
    assert not errors, errors
    changed = 0
    for call in p.sampler.denoiser.calls:
        plain = forge_unet_forward(env.unet, call.x, call.timesteps, call.context, {})
        rows = call.x.shape[0] // len(call.cond_or_uncond)
        for c, chunk in enumerate(call.cond_or_uncond):
            got, ref = call.out[c * rows : (c + 1) * rows], plain[c * rows : (c + 1) * rows]
            if chunk == 0:
                assert torch.equal(got, ref), (batching, c)  # cond: bit for bit
            else:
                assert not torch.allclose(got, ref), (batching, c)
                changed += 1
    assert changed


@torch.no_grad()
def test_the_console_says_when_forge_skips_the_uncond(env, capsys):  # noqa: F811
    run_forge_job(env.script, unit_args(NEGATIVE_ONLY), forge_job(env, skip_uncond_steps={0, 1, 2}))
    out = capsys.readouterr().out
    assert "unit 1 ('composition precise') moves the reference to the negative (uncond) side" in out
    assert "skipped the uncond pass on 3 of 3 steps" in out


@torch.no_grad()
def test_per_batch_image_on_forge_equals_one_reference_per_generation(env):  # noqa: F811
    a, b = image(3), image(4)
    api = [{"image": [_b64(a), _b64(b)], "model": "tiny-plus", "weight": 0.8, "per_batch_image": True}]
    both = run_forge_job(env.script, api, forge_job(env, batch=2, batching="split"))
    only_a = run_forge_job(env.script, unit_args({**PLUS, "image": a}), forge_job(env, batch=2, batching="split"))
    only_b = run_forge_job(env.script, unit_args({**PLUS, "image": b}), forge_job(env, batch=2, batching="split"))
    torch.testing.assert_close(both[0], only_a[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1], only_b[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[1], only_a[1], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_tiles_on_forge_equal_the_a1111_hooks_row_by_row(env):  # noqa: F811
    unit = {**PLUS, "image": WIDE, "crop": "tiles"}
    p = forge_job(env, batch=1)
    tiled = run_forge_job(env.script, unit_args(unit), p)
    assert "tiles: 3 across" in p.extra_generation_params["IP-Adapter 1"]
    assert not torch.allclose(tiled, run_forge_job(env.script, unit_args({**unit, "crop": "center"}), forge_job(env)))
    request = UnitRequest(1, [WIDE], "tiny-plus", weight=0.8, crop="tiles")
    clone, _ = forge_patched(env, [request])
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 48, generator=g)
    t = torch.full((2,), 500)
    to = dict(clone.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=torch.full((1,), 3.0))
    out = forge_unet_forward(env.unet, x, t, ctx, to)
    model = sd_model(env.unet)
    _, modules, signature = a1111.unet_layout(model)
    ref = a1111.engine().prepare([request], signature, a1111.placement(model, env.unet))
    ref.attach(env.unet, modules)
    try:
        for i, cond in enumerate((0, 1)):  # chunk 1 (uncond) first, then chunk 0 (cond)
            ref.begin_step(0.5, cond, 1)
            expected = env.unet(x[i : i + 1], t[i : i + 1], context=ctx[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], expected, atol=1e-5, rtol=0)
    finally:
        ref.detach()
