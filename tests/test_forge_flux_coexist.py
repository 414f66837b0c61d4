"""Issue 19 item 8: our Flux patches beside another script that patches the same double blocks.

The other script is a double (tests/doubles/block_patching_script.py): per request it clones the
UNet patcher, wraps each double block's ``forward`` as ``get_model_object`` answers it, and
deletes its per-request state when the request ends. In the real tiny-Flux Forge, a unit right
after a request that used such a script, both in one request, and every request after, failed.

Each request here must give exactly what the same request gives as the first one on a fresh
model with the same weights: nothing a previous request left on the model may act, in either
script order, and each patch applies exactly once.
"""

from __future__ import annotations

import types
from types import SimpleNamespace

import pytest
import torch

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.host import forge
from ipadapter_ext.host.forge import flux as forge_flux
from tests.a1111_env import image
from tests.doubles.block_patching_script import BlockScalingScript, ScaledBlock
from tests.test_forge_flux import _job, make_env

UNIT = [UnitRequest(1, [image(1)], "tiny-flux", weight=1.0)]


@pytest.fixture
def env(tmp_path, monkeypatch):
    yield from make_env(tmp_path, monkeypatch)


def _request(env, requests, order: str, script: BlockScalingScript) -> torch.Tensor:
    """One request: ``order`` says which scripts run their per-pass hook, in order ("o" for the
    other script, "u" for ours)."""
    from tests.doubles.forge_flux_sampling import run_flux_job

    p = _job(env, requests if "u" in order else None)

    def before(p):
        for who in order:
            (forge.before_sampling if who == "u" else script.before_sampling)(p)

    try:
        with torch.no_grad():
            return run_flux_job(p, before)
    finally:
        forge.postprocess(p)
        script.postprocess(p)


def _fresh(env, requests, order: str, factor: float = 0.9) -> torch.Tensor:
    """The same request as the first one on a new model with the same weights."""
    from tests.doubles.forge_flux_sampling import FluxForgeModel, MemoryManagement, flux_patcher
    from tests.flux_env import twin_models

    _, double = twin_models()
    patcher = flux_patcher(double)
    fresh = SimpleNamespace(**{**vars(env), "double": double, "patcher": patcher, "model": FluxForgeModel(patcher)})
    fresh.memory = MemoryManagement()
    return _request(fresh, requests, order, BlockScalingScript(factor))


def _forward_chain(block) -> list:
    """What the block's ``forward`` calls, outermost first, down to a plain bound method."""
    chain, obj = [], block.forward
    while not isinstance(obj, types.MethodType):
        chain.append(obj)
        obj = obj.previous if hasattr(obj, "previous") else obj.original
    return [*chain, obj]


@pytest.mark.parametrize("sequence", ["o,u,ou,uo,-,u", "u,o,uo,ou,u,-", "ou,ou,uo,uo,o,u"])
def test_every_request_equals_its_fresh_run_whatever_ran_before(env, sequence):
    script = BlockScalingScript(0.9)
    expected: dict[str, torch.Tensor] = {}
    for order in sequence.split(","):
        order = "" if order == "-" else order
        got = _request(env, UNIT, order, script)
        if order not in expected:
            expected[order] = _fresh(env, UNIT, order)
        assert torch.equal(got, expected[order]), f"request {order or 'plain'!r} after {sequence!r} differs"
    assert env.patcher.object_patches == {}
    assert not script.live  # every request of the other script ended


def test_both_patches_apply_once_in_either_order(env):
    script = BlockScalingScript(0.9)
    unit_only = _fresh(env, UNIT, "u")
    other_only = _fresh(env, UNIT, "o")
    for order in ("ou", "uo"):
        both = _request(env, UNIT, order, script)
        assert not torch.equal(both, unit_only) and not torch.equal(both, other_only)
        # each applies exactly once: with the other one neutral, the result is the single one's
        assert torch.equal(
            _request(env, [UnitRequest(1, [image(1)], "tiny-flux", weight=0.0)], order, script), other_only
        )
        neutral = BlockScalingScript(1.0)
        assert torch.equal(_request(env, UNIT, order, neutral), unit_only)
    assert not torch.equal(_request(env, UNIT, "ou", script), _request(env, UNIT, "uo", script))


def test_our_patch_never_chains_onto_a_previous_requests_leftover(env):
    script = BlockScalingScript(0.9)
    _request(env, UNIT, "o", script)  # its wrappers stay on the model until another clone loads
    p = _job(env, UNIT)
    p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
    p.sd_model.forge_objects = SimpleNamespace(unet=env.patcher)  # Forge's reset at the start of a pass
    forge.before_sampling(p)
    clone = p.sd_model.forge_objects.unet
    patch = clone.object_patches[forge_flux._DOUBLE.format(0) + ".forward"]
    assert isinstance(patch, forge_flux.FluxBlockPatch)
    assert isinstance(patch.previous, types.MethodType)  # the class's own forward, not the leftover
    assert patch.previous.__func__ is type(env.double.double_blocks[0]).forward
    assert isinstance(env.double.double_blocks[0].forward, ScaledBlock)  # the leftover is still on the model
    forge.postprocess(p)


def test_a_leftover_of_ours_is_inert_for_a_script_that_wraps_it(env):
    """The other script reads our patch (left on the model) through ``get_model_object``; once our
    request has ended, calling it runs the block's own forward, never what our request chained."""
    script = BlockScalingScript(0.9)
    _request(env, UNIT, "ou", script)  # ours wraps the other script's wrapper of that request
    assert not script.live
    other = _request(env, UNIT, "o", script)  # wraps our leftover, which wraps a stale wrapper
    assert torch.equal(other, _fresh(env, UNIT, "o"))
    chain = _forward_chain(env.double.double_blocks[0])
    assert isinstance(chain[0], ScaledBlock) and isinstance(chain[1], forge_flux.FluxBlockPatch)
    assert chain[1].run.closed


def test_both_apply_in_either_order_where_the_host_runs_clones_without_their_patches(env):
    """ersatzForge runs a clone of the loaded model on it as it is (tests/doubles/forge_flux_sampling.py
    ``reuse_clones``): our wrapper puts on, for its call, what the sampled clone's object patches
    hold on our attributes, the other script's wrapper of ours included when it ran after us. The
    same sequence of requests must give what it gives where Forge applies the patches itself."""
    from tests.doubles.forge_flux_sampling import MemoryManagement
    from tests.test_forge_flux import ersatz_model

    ersatz, forge_twin = ersatz_model(env), ersatz_model(env)
    forge_twin.memory = MemoryManagement()
    theirs, twins = BlockScalingScript(0.9), BlockScalingScript(0.9)
    for order in ("ou", "uo", "o", "uo", "ou", "u"):
        requests = UNIT if "u" in order else None
        got, expected = _request(ersatz, requests, order, theirs), _request(forge_twin, requests, order, twins)
        if order != "o":  # alone, the other script's patches never reach ersatzForge's model (not ours)
            assert torch.equal(got, expected), f"request {order!r} differs from Forge's"
    assert not theirs.live
