"""The real scripts/ipadapter.py on Forge, through doubles of Forge's patcher contract
(tests/doubles/forge_backend.py mirrors backend/patcher/unet.py and backend/nn/unet.py,
tests/doubles/forge_sampling.py the sampling path) on the same ldm UNet and model files as the
A1111 tests, so the two hosts are compared on identical weights and inputs.

The generation tests here read the family from the ``env`` fixture (its patcher, UNet forward,
sampling flavour, state class, kernel and schedule), so test_forge1.py runs the very same tests on
the Forge 1 doubles (reForge, Forge Classic) with its own ``env``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from modules import script_callbacks

from ipadapter_ext.core.attend.weights import WeightType
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111, common, forge
from ipadapter_ext.host.forge import attn2_patch as forge_patch
from ipadapter_ext.host.forge.readers import FORGE2
from tests.a1111_env import CTX, PLUS, attn2_widths, image, make_webui, sd_model, unit_args
from tests.doubles.forge_backend import forge_unet_forward, unet_patcher
from tests.doubles.forge_sampling import FORGE2 as FORGE2_SAMPLING
from tests.doubles.forge_sampling import ForgeModel, ForgeProcessing, run_forge_job

FORGE_DOUBLES = str(Path(__file__).parent / "doubles" / "forge")
API_UNIT = {"image": None, "model": "tiny-plus", "weight": 0.8, "start": 0.0, "end": 1.0, "crop": "center"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)  # makes the host look like Forge when the script loads
    webui = make_webui(tmp_path, monkeypatch)
    base = next(webui)
    from backend import memory_management

    memory_management.reset()
    patcher = unet_patcher(base.unet)
    yield family_env(base, patcher, forge.ForgeState, FORGE2_SAMPLING, forge_unet_forward, FORGE2.attention)
    webui.close()


def family_env(base, patcher, state, flavour, forward, kernel) -> SimpleNamespace:
    """What the generation tests need of a Forge family: the script and UNet of ``make_webui``, the
    family's patcher double, the script's state class, the sampling flavour, the UNet forward that
    honours the patch tables, and the host kernel (``readers.attention``: (q, k, v, extra_options))."""
    return SimpleNamespace(script=base.script, unet=base.unet, patcher=patcher, model=ForgeModel(patcher),
                           state=state, flavour=flavour, forward=forward, kernel=kernel,
                           schedule=state.readers.schedule)  # fmt: skip


def job(env, **kw) -> ForgeProcessing:
    batch = kw.pop("batch", 1)
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(batch, 77, CTX, generator=g), torch.randn(batch, 77, CTX, generator=g)
    return ForgeProcessing(sd_model=env.model, cond=cond, uncond=uncond, batch=batch, flavour=env.flavour, **kw)


def patched(env, requests: list[UnitRequest]) -> tuple[object, ForgeProcessing]:
    """The clone process_before_every_sampling leaves on the model, for ``requests``."""
    p = job(env)
    p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
    setattr(p, common.STATE_ATTR, env.state(requests))
    forge.before_sampling(p)
    assert getattr(p, common.STATE_ATTR).error is None
    return p.sd_model.forge_objects.unet, p


def test_the_script_picks_the_forge_host(env, monkeypatch, capsys):
    from ipadapter_ext.host import family_key, is_forge, select, startup_line

    assert is_forge() and family_key() == "forge" and select() is forge
    line = startup_line()
    assert line.startswith("IP-Adapter: host family Forge 2") and "backend.patcher.unet" in line
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != FORGE_DOUBLES])
    assert not is_forge() and select() is a1111
    assert "AUTOMATIC1111 (no modules_forge package)" in startup_line()


LAYOUTS = {
    "uncond_then_cond": ([1, 0], 1),
    "cond_then_uncond": ([0, 1], 1),
    "cond_only": ([0], 1),
    "uncond_only": ([1], 1),
    "batch_2_uncond_then_cond": ([1, 0], 2),
}
REQUESTS = {
    "plus": [UnitRequest(1, [image(1)], "tiny-plus", weight=0.8)],
    "two_units_style_and_mask": [
        UnitRequest(1, [image(1)], "tiny-plus", weight=0.8, weight_type=WeightType.STYLE),
        UnitRequest(2, [image(2)], "tiny-base", weight=1.3, mask=torch.linspace(0, 1, 16).repeat(12, 1)),
    ],
}


@torch.no_grad()
@pytest.mark.parametrize("requests", list(REQUESTS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forge_patch_equals_the_a1111_path(env, layout, requests):
    """Each row of a Forge UNet call equals that row run alone through the A1111 hooks."""
    chunks, batch = LAYOUTS[layout]
    clone, _ = patched(env, REQUESTS[requests])
    g = torch.Generator().manual_seed(3)
    rows = batch * len(chunks)
    x, ctx = torch.randn(rows, 4, 8, 8, generator=g), torch.randn(rows, 77, CTX, generator=g)
    t = torch.full((rows,), 500)
    to = dict(clone.model_options["transformer_options"], cond_or_uncond=chunks, sigmas=torch.full((batch,), 3.0))
    out = env.forward(env.unet, x, t, ctx, to)
    plain = env.forward(env.unet, x, t, ctx, {})
    model = sd_model(env.unet)
    _, modules, signature = a1111.unet_layout(model)
    ref = a1111.engine().prepare(REQUESTS[requests], signature, a1111.placement(model, env.unet))
    ref.attach(env.unet, modules)
    try:
        for i in range(rows):
            ref.begin_step(0.5, 1 if chunks[i // batch] == 0 else 0, 1)
            expected = env.unet(x[i : i + 1], t[i : i + 1], context=ctx[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], expected, atol=1e-5, rtol=0)
    finally:
        ref.detach()
    assert (out - plain).abs().amax() > 1e-3  # the image term is really there


@torch.no_grad()
def test_clone_leaves_the_original_patcher_untouched_and_keys_every_layer(env):
    before = repr(env.patcher.model_options)
    clone, p = patched(env, REQUESTS["plus"])
    assert clone is not env.patcher and p.sd_model.forge_objects_after_applying_lora.unet is env.patcher
    assert repr(env.patcher.model_options) == before and not env.patcher.extra_model_patchers_during_sampling
    keys = set(clone.attn2_table())
    assert len(keys) == 16 and ("middle", 0, 0) in keys and ("input", 1, 0) in keys and ("output", 11, 0) in keys
    (extra,) = clone.extra_model_patchers_during_sampling  # the K/V went to Forge's memory management
    assert isinstance(extra.model, forge_patch.KVModule) and len(list(extra.model.buffers())) == 2 * 16
    assert clone.clone().attn2_table()[("middle", 0, 0)] is clone.attn2_table()[("middle", 0, 0)]  # no deep copy


class BuiltinLike:
    """Stands in for Forge's built-in IP-Adapter patch (sd_forge_ipadapter's ``CrossAttentionPatch``,
    the same class in both Forge families): the host kernel plus its own term, and
    set_new_condition. Like the built-in's object it is deep-copied by every ``clone()``, so calls
    count on the class."""

    calls = 0

    def __init__(self, kernel):
        self.conditions = 1
        self.kernel = kernel

    def __call__(self, q, k, v, extra):
        BuiltinLike.calls += 1
        return self.kernel(q, k, v, extra) + 0.01 * self.conditions

    def set_new_condition(self, **kwargs):
        self.conditions += 1


BuiltinLike.__name__ = "CrossAttentionPatch"


@torch.no_grad()
@pytest.mark.parametrize("short_key", [True, False])
def test_a_patch_already_on_the_key_is_chained_and_keeps_its_contribution(env, short_key, capsys):
    earlier = BuiltinLike(env.kernel)
    base = env.patcher.clone()
    for name, i, j in [("input", 1, 0), ("middle", 0, 0)]:
        base.set_model_attn2_replace(earlier, name, i, None if short_key else j)
    clone, _ = patched_on(env, base)
    ours = clone.attn2_table()[("middle", 0, 0)]
    assert type(ours.previous) is BuiltinLike  # a deep copy, as Forge's clone() makes
    q, k, v = (torch.randn(2, 4, 32 * 4) for _ in range(3))
    extra = {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([3.0]), "original_shape": [2, 4, 2, 2]}
    alone = forge_patch.Attn2Patch(15, ours.run)(q, k, v, extra)
    plain = env.kernel(q, k, v, extra)
    torch.testing.assert_close(ours(q, k, v, extra), alone + 0.01, atol=1e-6, rtol=0)
    assert (alone - plain).abs().amax() > 1e-4
    ours.set_new_condition(weight=1.0)  # the built-in adding a second unit reaches its own patch
    assert ours.previous.conditions == 2
    with pytest.raises(RuntimeError, match="PuLID cannot add its unit"):  # the built-in has no add()
        ours.add(None, weight=1.0)
    BuiltinLike.calls = 0
    p = job(env)
    env.model.forge_objects_after_applying_lora.unet = base
    run_forge_job(env.script, unit_args(PLUS), p)
    assert BuiltinLike.calls == 2 * 3  # 2 layers × 3 steps (one UNet call per step), under our patch
    out = capsys.readouterr().out
    assert "the WebUI's built-in IP-Adapter (a ControlNet unit) is also active on 2 cross-attention layers" in out
    assert "both apply, this extension's units after it" in out


class PulidLike:
    """Stands in for ersatzForge's built-in PuLID patch (``Attn2Replace``): the host kernel plus its
    own term; more faces come in through ``add``."""

    def __init__(self, kernel):
        self.kernel, self.callbacks = kernel, [None]

    def __call__(self, q, k, v, extra):
        return self.kernel(q, k, v, extra) - 0.02 * len(self.callbacks)

    def add(self, callback, **kwargs):
        self.callbacks.append(callback)


PulidLike.__name__ = "Attn2Replace"


@torch.no_grad()
def test_pulid_on_the_key_is_chained_and_named(env, capsys):
    base = env.patcher.clone()
    base.set_model_attn2_replace(PulidLike(env.kernel), "middle", 0, 0)  # a long key, as PuLID writes them
    clone, _ = patched_on(env, base)
    ours = clone.attn2_table()[("middle", 0, 0)]
    q, k, v = (torch.randn(2, 4, 32 * 4) for _ in range(3))
    extra = {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([3.0]), "original_shape": [2, 4, 2, 2]}
    alone = forge_patch.Attn2Patch(ours.layer, ours.run)(q, k, v, extra)
    torch.testing.assert_close(ours(q, k, v, extra), alone - 0.02, atol=1e-6, rtol=0)
    ours.add("second face", weight=1.0)  # PuLID adding a face reaches its own patch
    assert ours.previous.callbacks == [None, "second face"]
    run_forge_job(env.script, unit_args(PLUS), job(env))
    assert (
        "PuLID (the WebUI's built-in sd_forge_ipadapter, or an extension) is also active on 1"
        in capsys.readouterr().out
    )


def patched_on(env, base):
    env.model.forge_objects_after_applying_lora.unet = base
    env.model.forge_objects = env.model.forge_objects_after_applying_lora.shallow_copy()
    return patched(env, REQUESTS["plus"])


@torch.no_grad()
def test_start_end_follow_the_step_fraction_like_a1111(env):
    base = job(env, steps=3)
    run_forge_job(env.script, unit_args(enabled=False), base)
    late = job(env, steps=3)
    run_forge_job(env.script, unit_args({**PLUS, "start": 0.6}), late)
    b, c = base.samplers[0].denoiser.calls, late.samplers[0].denoiser.calls
    assert torch.equal(b[0].out, c[0].out) and torch.equal(b[1].out, c[1].out)  # steps 0 and 1/3: off
    assert not torch.allclose(b[2].out, c[2].out)  # step 2/3: on
    early = job(env, steps=3)
    run_forge_job(env.script, unit_args({**PLUS, "end": 0.5}), early)
    assert not torch.allclose(b[0].out, early.samplers[0].denoiser.calls[0].out)  # step 0: on


@torch.no_grad()
def test_calls_the_denoiser_did_not_report_are_gated_by_sigma(env):
    requests = [UnitRequest(1, [image(1)], "tiny-plus", weight=0.8, start=0.3, end=0.7)]
    clone, _ = patched(env, requests)
    schedule = env.schedule(clone)
    hi, lo = schedule.percent_to_sigma(0.3), schedule.percent_to_sigma(0.7)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, CTX, generator=g)
    t = torch.full((2,), 400)

    def run(sigma):
        to = dict(clone.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=torch.tensor([sigma]))
        return env.forward(env.unet, x, t, ctx, to)

    plain = env.forward(env.unet, x, t, ctx, {})
    assert torch.equal(run(hi * 1.01), plain) and torch.equal(run(lo * 0.99), plain)
    assert not torch.allclose(run(hi * 0.99), plain) and not torch.allclose(run(lo * 1.01), plain)


@pytest.mark.parametrize("is_api", [False, True])
def test_errors_surface_before_sampling(env, is_api):
    p = job(env, is_api=is_api)
    errors: list[str] = []
    from fastapi import HTTPException

    with pytest.raises(HTTPException if is_api else IPAdapterError) as caught:
        run_forge_job(env.script, unit_args({**PLUS, "model": "tiny-xl"}), p, errors)
    assert "IP-Adapter unit 1" in str(getattr(caught.value, "detail", caught.value))
    assert getattr(caught.value, "status_code", 422) == 422
    assert p.samplers[0].denoiser is None  # the UNet never ran
    assert not p.sd_model.forge_objects.unet.attn2_table()


@torch.no_grad()
def test_same_api_units_and_infotext_as_a1111(env, tmp_path):
    import base64
    import io

    buf = io.BytesIO()
    image(1).save(buf, format="PNG")
    unit = {**API_UNIT, "image": base64.b64encode(buf.getvalue()).decode()}
    p = job(env, is_api=True, enable_hr=True)
    out = run_forge_job(env.script, [unit], p)
    assert torch.isfinite(out).all() and len(p.samplers) == 2
    assert all(c.out is not None for s in p.samplers for c in s.denoiser.calls)
    assert p.extra_generation_params["IP-Adapter 1"].startswith("model: tiny-plus")
    a1111_params: dict = {}
    common.parse_requests(SimpleNamespace(extra_generation_params=a1111_params), ([unit],))
    assert a1111_params == p.extra_generation_params


def test_weight_zero_is_bit_identical_and_registered_once(env):
    base = job(env)
    run_forge_job(env.script, unit_args(enabled=False), base)
    zero = job(env)
    run_forge_job(env.script, unit_args({**PLUS, "weight": 0.0}), zero)
    for a, b in zip(base.samplers[0].denoiser.calls, zero.samplers[0].denoiser.calls, strict=True):
        assert torch.equal(a.out, b.out)
    names = [n for n, _ in script_callbacks.callbacks["cfg_denoiser"]]
    assert names.count("ipadapter_cfg_denoiser") == 1


def test_kv_module_moves_the_tensors_the_units_read(env):
    clone, p = patched(env, REQUESTS["plus"])
    module = clone.extra_model_patchers_during_sampling[0].model
    module.to(torch.float64)
    unit = getattr(p, common.STATE_ATTR).job.units[0]
    assert unit.kv.kv[0][0].dtype == torch.float64 and unit.kv.kv[0][0] is module.k_0_0
    assert unit.kv.rows(0, (True,))[0].dtype == torch.float64


@torch.no_grad()
def test_several_init_images_each_reference_their_own_image(env):
    """img2img with two init images and ``image_from_init``: on Forge too, each generated image's
    rows (cond and uncond, in every chunk) see the reference made from its own init image."""
    a, b = image(3), image(4)

    def run(unit):
        p = job(env, batch=2)
        p.init_images = [a, b]
        return run_forge_job(env.script, unit_args(unit), p)

    both = run({**PLUS, "image": None, "image_from_init": True})
    only_a, only_b = run({**PLUS, "image": a}), run({**PLUS, "image": b})
    torch.testing.assert_close(both[0], only_a[0], rtol=1e-4, atol=1e-5)  # a stacked projection: a tolerance
    torch.testing.assert_close(both[1], only_b[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], only_b[0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_faceid_unit_with_its_lora_on_forge(env, tmp_path):
    """FaceID on Forge: the LoRA goes on the pass's UNet with the attn2 patches and comes off when
    the pass ends; weight 0 and the next request are the baseline, bit for bit."""
    from tests.test_faceid import FACE, write_faceid_files

    write_faceid_files(tmp_path / "models", attn2_widths(env.unet))
    unit = {"image": FACE, "model": "tiny-faceid", "weight": 1.0}
    plain = run_forge_job(env.script, unit_args(enabled=False), job(env))
    ours = run_forge_job(env.script, unit_args(unit), job(env))
    no_lora = run_forge_job(env.script, unit_args({**unit, "lora_strength": 0.0}), job(env))
    assert not torch.allclose(ours, plain) and not torch.allclose(ours, no_lora)
    assert all(not m._forward_hooks for m in env.unet.modules())
    assert torch.equal(run_forge_job(env.script, unit_args({**unit, "weight": 0.0}), job(env)), plain)
    assert torch.equal(run_forge_job(env.script, unit_args(enabled=False), job(env)), plain)


@torch.no_grad()
def test_an_exception_during_sampling_leaves_nothing_behind(env, tmp_path):
    """The sampler fails half-way (an interrupt, out of memory, another extension): FaceID's LoRA
    hooks come off, the patcher the host keeps is untouched, and the next requests, with and
    without a unit, equal the same requests before, bit for bit."""
    from tests.test_faceid import FACE, write_faceid_files

    write_faceid_files(tmp_path / "models", attn2_widths(env.unet))
    face = {"image": FACE, "model": "tiny-faceid", "weight": 1.0}
    plain = run_forge_job(env.script, unit_args(enabled=False), job(env))
    with_unit = run_forge_job(env.script, unit_args(face), job(env))
    before = repr(env.patcher.model_options)
    failing = job(env, fail_at_step=1)
    with pytest.raises(RuntimeError, match="sampling failed at step 1"):
        run_forge_job(env.script, unit_args(face), failing)
    assert failing.samplers[0].denoiser.step == 1  # the unit's patches did run before the failure
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in env.unet.modules())
    assert env.model.forge_objects_after_applying_lora.unet is env.patcher
    assert repr(env.patcher.model_options) == before and not env.patcher.extra_model_patchers_during_sampling
    assert torch.equal(run_forge_job(env.script, unit_args(enabled=False), job(env)), plain)
    assert torch.equal(run_forge_job(env.script, unit_args(face), job(env)), with_unit)


@torch.no_grad()
def test_the_kv_go_at_the_end_of_the_generation_though_forge_keeps_the_patched_clone(env):
    """Forge keeps the last pass's patched clone (``forge_objects`` and its loaded-model list)
    until the next generation; the soak found its K/V still reported after the run on Forge."""
    p = job(env, enable_hr=True)
    run_forge_job(env.script, unit_args(PLUS), p)
    clone = p.sd_model.forge_objects.unet
    assert clone is not env.patcher  # the patched clone is still there, as in Forge
    assert a1111.engine().cache_report()["kv"]["entries"] == 0
    module = clone.extra_model_patchers_during_sampling[0].model
    assert not list(module.buffers())
