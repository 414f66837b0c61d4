"""The Forge host on Flux, end to end through the doubles: the real script's per-pass hook
(``forge.before_sampling``) with units resolved by the engine from model folders (a tiny XLabs
file, the tiny CLIP), on the double of Forge's Flux transformer driven by the sampling double
(tests/doubles/forge_flux_sampling.py: memory management, cond/uncond batching, the unet function
wrapper, ``on_cfg_denoiser``). The math itself is checked against diffusers in test_flux.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipadapter_ext.core.attend.weights import WeightType
from ipadapter_ext.core.encode.preprocess import CLIP_MEAN, CLIP_STD
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IncompatibleModelError, IPAdapterError
from ipadapter_ext.core.project.projections import EncodedImages
from ipadapter_ext.host import common, forge
from ipadapter_ext.host.forge import flux as forge_flux
from tests.a1111_env import image, make_webui
from tests.flux_env import POOLED, TXT, save_xlabs, twin_models

FORGE_DOUBLES = str(Path(__file__).parent / "doubles" / "forge")


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield from make_env(tmp_path, monkeypatch)


def make_env(tmp_path, monkeypatch):
    """The Forge doubles on a tiny Flux, with model folders holding a tiny XLabs file and CLIP."""
    monkeypatch.syspath_prepend(FORGE_DOUBLES)
    from tests.doubles.forge_flux_sampling import FluxForgeModel, MemoryManagement, flux_patcher

    webui = make_webui(tmp_path, monkeypatch)
    base = next(webui)
    save_xlabs(tmp_path / "models" / "ipadapter" / "tiny-flux.safetensors", seed=5)
    _, double = twin_models()
    patcher = flux_patcher(double)
    yield SimpleNamespace(
        double=double,
        patcher=patcher,
        model=FluxForgeModel(patcher),
        memory=MemoryManagement(),
        sd=base,
        tmp=tmp_path,
    )
    webui.close()


def _job(env, requests, batch: int = 1, **kw):
    from tests.doubles.forge_flux_sampling import FluxConds, FluxProcessing

    g = torch.Generator().manual_seed(11)

    def conds():
        return FluxConds(torch.randn(batch, 5, TXT, generator=g), torch.randn(batch, POOLED, generator=g), torch.full((batch,), 3.5))  # fmt: skip

    p = FluxProcessing(env.model, conds(), conds(), env.memory, batch=batch, **kw)
    if requests is not None:
        setattr(p, common.STATE_ATTR, forge.ForgeState(requests))
    return p


def _run(env, requests, **kw) -> tuple[torch.Tensor, object]:
    from tests.doubles.forge_flux_sampling import run_flux_job

    p = _job(env, requests, **kw)
    with torch.no_grad():
        out = run_flux_job(p, forge.before_sampling)
    forge.postprocess(p)
    return out, p


def _unit(weight: float = 1.0, **kw) -> UnitRequest:
    return UnitRequest(1, [image(1)], "tiny-flux", weight=weight, **kw)


def test_a_unit_changes_flux_and_leaves_nothing_behind(env):
    baseline, _ = _run(env, None)
    one, p = _run(env, [_unit()])
    assert getattr(p, common.STATE_ATTR, None) is None or getattr(p, common.STATE_ATTR).error is None
    again, _ = _run(env, [_unit()])
    zero, _ = _run(env, [_unit(0.0)])
    after, _ = _run(env, None)
    assert (one - baseline).abs().max() > 1e-3
    assert torch.equal(one, again)  # deterministic
    assert torch.equal(zero, baseline)  # weight 0: the blocks run untouched
    assert torch.equal(after, baseline)  # the next request without a unit
    assert env.patcher.object_patches == {}
    assert not isinstance(env.double.double_blocks[0].forward, forge_flux.FluxBlockPatch)


def ersatz_model(env) -> SimpleNamespace:
    """Another copy of ``env``'s Flux (same weights, same model folders) under ersatzForge's
    memory manager, which runs a clone of the loaded model without its object patches."""
    from tests.doubles.forge_flux_sampling import FluxForgeModel, MemoryManagement, flux_patcher

    _, double = twin_models()
    patcher = flux_patcher(double)
    memory = MemoryManagement(reuse_clones=True)
    return SimpleNamespace(**{**vars(env), "double": double, "patcher": patcher, "model": FluxForgeModel(patcher), "memory": memory})  # fmt: skip


@pytest.fixture
def ersatz(env):
    return ersatz_model(env)


def _own_forwards(env) -> list[object]:
    """Patches left as instance attributes on the blocks' modules (the class's methods aside)."""
    return [m.__dict__["forward"] for m in env.double.modules() if "forward" in m.__dict__]


def test_a_unit_acts_where_the_host_runs_a_clone_without_its_object_patches(ersatz):
    # ersatzForge: the loaded model serves every later clone as it is; only the wrapper reaches it
    baseline, _ = _run(ersatz, None)
    one, _ = _run(ersatz, [_unit()])
    assert _own_forwards(ersatz) == []  # put on for the call only
    zero, _ = _run(ersatz, [_unit(0.0)])
    after, _ = _run(ersatz, None)
    assert (one - baseline).abs().max() > 1e-3
    assert torch.equal(zero, baseline) and torch.equal(after, baseline)
    assert _own_forwards(ersatz) == []


def test_the_same_unit_gives_the_same_result_whether_the_host_or_the_wrapper_patches(env, ersatz):
    # Forge applies the clone's object patches at load; on ersatzForge the first load of the model
    # is our clone's (patches applied and left, inert, on the model), every later one the wrapper's
    forge_one, _ = _run(env, [_unit()])
    first, _ = _run(ersatz, [_unit()])
    assert any(isinstance(f, forge_flux.FluxBlockPatch) for f in _own_forwards(ersatz))
    after, _ = _run(ersatz, None)
    again, _ = _run(ersatz, [_unit()])
    plain, _ = _run(env, None)
    assert torch.equal(first, forge_one) and torch.equal(again, forge_one)
    assert torch.equal(after, plain)  # what the first load left is inert


def test_true_cfg_and_batch_2(env):
    base, _ = _run(env, None, batch=2, cfg_scale=3.0)
    joint, _ = _run(env, [_unit()], batch=2, cfg_scale=3.0, batching=[[1, 0]])
    split, _ = _run(env, [_unit()], batch=2, cfg_scale=3.0, batching=[[1], [0]])
    assert joint.shape[0] == 2 and (joint - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    torch.testing.assert_close(split, joint, rtol=1e-5, atol=1e-5)  # how Forge batches rows does not matter


def test_uncond_tokens_are_the_projection_of_a_black_image(env):
    p = _job(env, [_unit()])
    p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
    forge.before_sampling(p)
    state = getattr(p, common.STATE_ATTR)
    assert state.error is None
    unit = state.job.units[0]
    from tests.test_encoder import _tiny_model

    model = _tiny_model(seed=4)  # the file in models/clip_vision
    size = model.config.image_size
    pixels = ((0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1).expand(1, 3, size, size)
    with torch.no_grad():
        black = model(pixel_values=pixels.contiguous()).image_embeds
    tokens = unit.adapter.project(EncodedImages(image_embeds=black)).reshape(1, -1, TXT)
    k, v = unit.adapter.layer_kv(tokens)[1]
    torch.testing.assert_close(unit.kv.kv[1][0][:1], k, rtol=1e-5, atol=1e-5)  # row 0 = uncond
    torch.testing.assert_close(unit.kv.kv[1][1][:1], v, rtol=1e-5, atol=1e-5)


def test_two_units_and_start_end_by_step(env):
    baseline, _ = _run(env, None)
    a, _ = _run(env, [_unit(0.8)])
    both, _ = _run(env, [_unit(0.8), UnitRequest(2, [image(2)], "tiny-flux", weight=0.5)])
    assert (both - a).abs().max() > 1e-4
    never, _ = _run(env, [_unit(start=0.7, end=1.0)], steps=3)  # steps at 0, 1/3, 2/3
    assert torch.equal(never, baseline)
    first, _ = _run(env, [_unit(start=0.0, end=0.2)], steps=3)
    full, _ = _run(env, [_unit()], steps=3)
    assert not torch.equal(first, baseline) and not torch.equal(first, full)


def test_sd_adapter_on_flux_is_refused_naming_both(env):
    p = _job(env, [UnitRequest(1, [image(1)], "tiny-plus")])
    from tests.doubles.forge_flux_sampling import run_flux_job

    with pytest.raises(IPAdapterError, match="tiny-plus") as raised:  # when sampling starts
        run_flux_job(p, forge.before_sampling)
    error = raised.value
    assert isinstance(error.__cause__, IncompatibleModelError)
    assert "the loaded checkpoint is Flux" in str(error)
    assert "tiny-flux" in str(error)  # the models that fit are listed


def test_sd_only_controls_are_refused_on_flux(env):
    for req in (_unit(weight_type=WeightType.STYLE), _unit(layer_weights=(1.0, 0.5))):
        p = _job(env, [req])
        p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
        forge.before_sampling(p)
        error = getattr(p, common.STATE_ATTR).error
        assert isinstance(error, IPAdapterError) and "Flux does not have" in str(error)


def test_flux_adapter_on_sd_is_refused_naming_both(env):
    from tests.doubles.forge_backend import unet_patcher
    from tests.doubles.forge_sampling import ForgeModel, ForgeProcessing

    model = ForgeModel(unet_patcher(env.sd.unet))
    p = ForgeProcessing(sd_model=model, cond=torch.zeros(1, 77, 48), uncond=torch.zeros(1, 77, 48))
    p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
    setattr(p, common.STATE_ATTR, forge.ForgeState([_unit()]))
    forge.before_sampling(p)
    error = getattr(p, common.STATE_ATTR).error
    assert isinstance(error, IPAdapterError) and isinstance(error.__cause__, IncompatibleModelError)
    assert "'tiny-flux' is a Flux IP-Adapter" in str(error) and "checkpoint is SD1.5" in str(error)


def test_the_loaded_flux_signature_is_what_routes_and_ui_check_against(env):
    from modules import shared

    from ipadapter_ext.host.models import loaded_signature

    shared.sd_model = env.model
    signature = loaded_signature()
    assert (signature.arch, signature.family, signature.context_dim) == ("flux", "Flux", TXT)
    assert len(signature.attn2_widths) == len(env.double.double_blocks)


def test_the_kv_module_leaves_the_hosts_loaded_models_when_the_pass_ends(env):
    """Each Flux generation with a unit hands Forge a new K/V module; Forge never takes its entry
    off (see test_forge.py): it is off the list once the pass is over, and stays off."""
    from backend import memory_management

    from ipadapter_ext.host.forge.attn2_patch import KVModule

    memory_management.reset()
    loaded = memory_management.current_loaded_models
    for _ in range(3):
        _run(env, [_unit()])
        assert memory_management.calls and isinstance(memory_management.calls[-1][0][0].model, KVModule)
        assert [e for e in loaded if isinstance(e.model.model, KVModule)] == []
