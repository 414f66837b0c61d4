"""SigLIP units on Forge's Flux, from model folders to sampling: the engine resolves InstantX and
Redux files with a tiny SigLIP (and an XLabs file with a tiny CLIP), and the units run on the
double of Forge's Flux through our patches and unet wrapper (tests/doubles/forge_flux_sampling.py).
The math itself is checked against diffusers in test_flux_instantx.py and test_flux_redux.py.

transformers has SigLIP from 4.37: these tests run in ``.venv-tf-latest`` (``tests/run.sh``'s
compatibility pass) and skip in the main venv (A1111's 4.30.2), saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.core.attend.context import downsample_tokens
from ipadapter_ext.core.encode.preprocess import SIGLIP_MEAN, SIGLIP_STD, pixel_values
from ipadapter_ext.core.engine import Engine, Placement, UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.registry import ModelRegistry
from ipadapter_ext.core.project.projections import EncodedImages
from ipadapter_ext.host.forge import flux as forge_flux
from ipadapter_ext.host.forge.attn2_patch import ForgeRun, StepClock
from ipadapter_ext.host.forge.flux_context import ContextUnits, attention_namespace
from ipadapter_ext.host.unet import flux_signature
from tests.flux_env import POOLED, TXT, save_instantx, save_redux, save_xlabs
from tests.siglip_env import save_siglip

try:
    from transformers import SiglipVisionModel
except ImportError:
    SiglipVisionModel = None

pytestmark = pytest.mark.skipif(
    SiglipVisionModel is None,
    reason="transformers has SiglipVisionModel from 4.37; this venv has an older one (A1111's 4.30.2). "
    "tests/run.sh runs this file again in .venv-tf-latest",
)
FORGE_DOUBLES = str(Path(__file__).parent / "doubles" / "forge")


def _image(seed: int, w: int = 60, h: int = 44) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def flux(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)
    from tests.doubles.forge_flux_sampling import MemoryManagement, flux_patcher
    from tests.flux_env import forge_flux as make_flux
    from tests.test_encoder import _save, _tiny_model

    adapters, encoders = tmp_path / "ipadapter", tmp_path / "clip_vision"
    save_instantx(adapters / "ip-adapter.bin", tokens=4, seed=1)
    save_redux(adapters / "flux1-redux-dev.safetensors", seed=2)
    save_xlabs(adapters / "xlabs.safetensors", seed=3)
    save_siglip(encoders / "siglip.safetensors", seed=4)
    _save(_tiny_model(seed=4), encoders / "clip-tiny.safetensors")
    torch.manual_seed(0)
    double = make_flux()
    with torch.no_grad():
        for p in double.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine = Engine(ModelRegistry([adapters], [encoders]))

    class Flux:
        def __init__(self):
            self.engine, self.double, self.patcher, self.memory = (
                engine,
                double,
                flux_patcher(double),
                MemoryManagement(),
            )
            g = torch.Generator().manual_seed(11)
            self.x = torch.randn(1, 4, 6, 8, generator=g)
            self.cond = (torch.randn(1, 5, TXT, generator=g), torch.randn(1, POOLED, generator=g))

        def job(self, requests):
            return self.engine.prepare(
                requests, flux_signature(self.double), Placement(torch.device("cpu"), torch.float32)
            )

        def run(self, requests=None) -> torch.Tensor:
            from tests.doubles.forge_flux_sampling import FluxConds, calc_cond_uncond_batch

            patcher, flux_run = self.patcher, None
            if requests:
                job = self.job(requests)
                clock = StepClock()
                ranges = [(1.0, 0.0)] * len(job.units)
                context = None
                if job.context:
                    ctx_run = ForgeRun(job.context, [(1.0, 0.0)] * len(job.context), clock)
                    context = ContextUnits(job.context, ctx_run, attention_namespace(self.double))
                patcher, flux_run = forge_flux.patched_clone(self.patcher, ForgeRun(job.units, ranges, clock), context)
            self.memory.load(patcher)
            conds = FluxConds(self.cond[0], self.cond[1], torch.full((1,), 3.5))
            try:
                with torch.no_grad():
                    return calc_cond_uncond_batch(patcher, conds, None, self.x, torch.full((1,), 0.6), [[0]])[0]
            finally:
                if flux_run is not None:
                    flux_run.close()

    return Flux()


def _ix(weight=1.0, **kw):
    return UnitRequest(1, [_image(1)], "ip-adapter", weight=weight, **kw)


def _redux(weight=1.0, **kw):
    return UnitRequest(2, [_image(2)], "flux1-redux-dev", weight=weight, **kw)


def _xlabs(weight=1.0):
    return UnitRequest(3, [_image(3)], "xlabs", weight=weight)


def test_auto_picks_siglip_and_the_tokens_come_from_it(flux):
    job = flux.job([_ix(crop="squash"), _redux(crop="squash", redux_downsample=2)])
    (unit,), (redux,) = job.units, job.context
    assert "ip-adapter + siglip" in unit.description and "flux1-redux-dev + siglip" in redux.description
    encoder = flux.engine._encoder(_ix(), unit.adapter, Placement(torch.device("cpu"), torch.float32))[1]
    pixels = pixel_values([_image(1)], 56, "squash", SIGLIP_MEAN, SIGLIP_STD)
    pooled = encoder.encode(pixels).image_embeds
    tokens = unit.adapter.project(EncodedImages(image_embeds=pooled)).reshape(1, -1, TXT)
    k0 = unit.adapter.layer_kv(tokens, head_dim=16)[0][0]
    torch.testing.assert_close(unit.kv.kv[0][0][1:], k0, rtol=1e-5, atol=1e-5)  # row 1 = cond
    adapter = IPAdapterModel.from_file(flux.engine.registry.adapter("flux1-redux-dev").path)
    hidden = encoder.encode(pixel_values([_image(2)], 56, "squash", SIGLIP_MEAN, SIGLIP_STD)).last_hidden
    expected = downsample_tokens(adapter.project(EncodedImages(last_hidden=hidden)), 2, "area")
    torch.testing.assert_close(redux.tokens, expected, rtol=1e-5, atol=1e-5)
    assert redux.num_tokens == 4  # 4×4 patches → 2×2
    assert "4 context tokens added" in redux.log_line()


def test_each_unit_changes_the_output_and_weight_zero_is_no_unit(flux):
    baseline = flux.run()
    for request, zero in (
        (_ix(), _ix(0.0)),
        (_redux(), _redux(0.0)),
        (_redux(redux_strength_mode="attention bias"), _redux(0.0)),
    ):
        out = flux.run([request])
        assert (out - baseline).abs().max() > 1e-3 and torch.equal(flux.run([request]), out)
        assert torch.equal(flux.run([zero]), baseline)
    assert torch.equal(flux.run(), baseline)  # the next request without a unit


def test_redux_instantx_and_xlabs_mix_in_one_generation(flux):
    mixed = flux.run([_ix(0.8), _redux(0.9), _xlabs(0.7)])
    singles = [flux.run([r]) for r in (_ix(0.8), _redux(0.9), _xlabs(0.7))]
    assert all(not torch.equal(mixed, s) for s in singles)
    assert torch.equal(flux.run([_ix(0.8), _redux(0.9), _xlabs(0.7)]), mixed)
    # a unit at weight 0 drops out exactly
    assert torch.equal(flux.run([_ix(0.8), _redux(0.0), _xlabs(0.7)]), flux.run([_ix(0.8), _xlabs(0.7)]))
    assert torch.equal(flux.run([_ix(0.0), _redux(0.9), _xlabs(0.7)]), flux.run([_redux(0.9), _xlabs(0.7)]))


def test_a_clip_encoder_for_a_siglip_adapter_is_refused_naming_siglip(flux):
    with pytest.raises(IPAdapterError, match=r"unit 1: .*cannot use 'clip-tiny': it is a CLIP encoder .*SigLIP"):
        flux.job([UnitRequest(1, [_image(1)], "ip-adapter", encoder="clip-tiny")])
    with pytest.raises(IPAdapterError, match=r"unit 3: .*cannot use 'siglip': it is a SigLIP encoder"):
        flux.job([UnitRequest(3, [_image(3)], "xlabs", encoder="siglip")])


def test_redux_refusals_in_words(flux):
    with pytest.raises(IPAdapterError, match="strength is the unit's weight, which is -0.5"):
        flux.job([_redux(-0.5)])
    with pytest.raises(IPAdapterError, match="negative_image and noise do not apply"):
        flux.job([_redux(negative_images=[_image(5)])])
    with pytest.raises(IPAdapterError, match="no embeds to make"):
        flux.engine.tokens(_redux(), Placement(torch.device("cpu"), torch.float32))


def test_costs_encoder_once_per_reference_kv_and_tokens_once(flux, monkeypatch):
    calls = {"kv": 0, "project": 0}
    real_kv, real_project = IPAdapterModel.layer_kv, IPAdapterModel.project

    def kv(self, *a, **k):
        calls["kv"] += 1
        return real_kv(self, *a, **k)

    def project(self, *a, **k):
        calls["project"] += 1
        return real_project(self, *a, **k)

    monkeypatch.setattr(IPAdapterModel, "layer_kv", kv)
    monkeypatch.setattr(IPAdapterModel, "project", project)
    flux.run([_ix(), _redux()])
    assert calls == {"kv": 1, "project": 3}  # InstantX: cond + black image; Redux: once; K/V once for all blocks
    misses = flux.engine.embeddings.misses
    flux.run([_ix(), _redux()])
    assert flux.engine.embeddings.misses == misses  # both references came from the cache
