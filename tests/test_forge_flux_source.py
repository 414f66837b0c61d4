"""Our Flux path on Forge's own ``backend/nn/flux.py`` (not the double) against diffusers.

Opt-in: ``FORGE_ROOT=/path/to/stable-diffusion-webui-forge`` (Forge's code is not on PyPI). The
file is loaded from there as ``backend.nn.flux``; everything around it stays the doubles'
(``backend.attention``: Forge's pulls in its memory management and device set-up; its two
helpers from ``backend.utils`` are restated below). The same checks as ``test_flux.py`` then run
with Forge's transformer class: no unit, weights 1/0.6/0, true CFG's uncond rows, two units, and
the patches leaving with the clone. Together with the e2e (``tests/e2e/test_webui_flux.py``)
this is what shows the double's math is Forge's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from ipadapter_ext.host import forge_flux
from tests.flux_env import load_into_diffusers, set_diffusers_scales
from tests.test_flux import ATOL, FORGE_DOUBLES, RTOL, Setup

FORGE_ROOT = os.environ.get("FORGE_ROOT", "")
FLUX_FILE = Path(FORGE_ROOT) / "backend" / "nn" / "flux.py"

pytestmark = pytest.mark.skipif(
    not (FORGE_ROOT and FLUX_FILE.is_file()),
    reason="opt-in: set FORGE_ROOT to a stable-diffusion-webui-forge folder (its backend/nn/flux.py is loaded)",
)


def _utils_module() -> types.ModuleType:
    """``backend.utils``'s two helpers flux.py imports: a tensor as a frozen Parameter, and fp16's
    clip to ±32768 (fp32 passes through)."""
    mod = types.ModuleType("backend.utils")

    def tensor2parameter(x):
        return x if isinstance(x, torch.nn.Parameter) else torch.nn.Parameter(x, requires_grad=False)

    def fp16_fix(x):
        return x.clip(-32768.0, 32768.0) if x.dtype == torch.float16 else x

    mod.tensor2parameter, mod.fp16_fix = tensor2parameter, fp16_fix
    return mod


@pytest.fixture
def forge_source(monkeypatch):
    """``backend.nn.flux`` is Forge's file for this test; the rest of ``backend`` the doubles'."""
    monkeypatch.syspath_prepend(FORGE_DOUBLES)
    for name in ("backend.attention", "backend.nn"):  # the doubles, imported before Forge's file asks for them
        importlib.import_module(name)

    monkeypatch.setitem(sys.modules, "backend.utils", _utils_module())
    spec = importlib.util.spec_from_file_location("backend.nn.flux", FLUX_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "backend.nn.flux", module)
    spec.loader.exec_module(module)
    return module


def test_forge_source_is_loaded(forge_source, tmp_path):
    s = Setup(tmp_path)
    assert (
        type(s.double).__module__ == "backend.nn.flux"
        and type(s.double) is forge_source.IntegratedFluxTransformer2DModel
    )
    assert Path(sys.modules[type(s.double).__module__].__file__) == FLUX_FILE


def test_forge_flux_without_units_equals_diffusers(forge_source, tmp_path):
    s = Setup(tmp_path)
    cond, _ = s.run(None)
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("weight", [1.0, 0.6, 0.0])
def test_forge_flux_one_unit_equals_diffusers(forge_source, tmp_path, weight):
    s = Setup(tmp_path)
    load_into_diffusers(s.reference, s.paths, [weight])
    cond, _ = s.run([s.unit(0, weight)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    baseline, _ = s.run(None)
    if weight == 0:
        assert torch.equal(cond, baseline)
    else:
        assert (cond - baseline).abs().max() > 1e-3


def test_forge_flux_true_cfg_uncond_rows_get_the_negative_projection(forge_source, tmp_path):
    s = Setup(tmp_path, batch=2)
    load_into_diffusers(s.reference, s.paths, [0.8])
    s.embeds = [torch.cat([e[:1], e[:1]]) for e in s.embeds]
    cond, uncond = s.run([s.unit(0, 0.8)], uncond=True)
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(uncond, s.oracle([b.expand(2, -1) for b in s.black], "uncond"), rtol=RTOL, atol=ATOL)


def test_forge_flux_two_units_add(forge_source, tmp_path):
    s = Setup(tmp_path, n_adapters=2)
    load_into_diffusers(s.reference, s.paths, [0.7, 1.2])
    cond, _ = s.run([s.unit(0, 0.7), s.unit(1, 1.2)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    set_diffusers_scales(s.reference, [0.7, 0.0])
    cond, _ = s.run([s.unit(0, 0.7), s.unit(1, 0.0)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)


def test_forge_flux_patches_leave_with_the_clone(forge_source, tmp_path):
    s = Setup(tmp_path)
    baseline, _ = s.run(None)
    patched, _ = s.run([s.unit(0, 1.0)])
    after, _ = s.run(None)
    assert torch.equal(after, baseline) and not torch.equal(patched, baseline)
    block = s.double.double_blocks[0]
    assert not isinstance(block.forward, forge_flux.FluxBlockPatch)
    assert not isinstance(block.img_attn.norm.forward, forge_flux.QueryTap)
