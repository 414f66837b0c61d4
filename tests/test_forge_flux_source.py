"""Our Flux path on Forge's own ``backend/nn/flux.py`` (not the double) against diffusers.

Opt-in: ``FORGE_ROOT=/path/to/stable-diffusion-webui-forge`` (Forge's code is not on PyPI). The
file is loaded from there as ``backend.nn.flux``; everything around it stays the doubles'
(``backend.attention``: Forge's pulls in its memory management and device set-up; its two
helpers from ``backend.utils`` are restated below). The same checks as ``test_flux.py`` then run
with Forge's transformer class: no unit, weights 1/0.6/0, true CFG's uncond rows, two units, and
the patches leaving with the clone; InstantX units on Forge's double and single blocks against the
reference of ``test_flux_instantx.py``; Redux tokens in Forge's context, with the attention bias
through Forge's own ``attention_function`` name, against diffusers (``test_flux_redux.py``).
Together with the e2e (``tests/e2e/test_webui_flux*.py``) this is what shows the double's math is
Forge's.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.test_flux import ATOL, FORGE_DOUBLES, RTOL, Setup
from tests.test_flux import test_one_unit_equals_diffusers as test_forge_flux_one_unit_equals_diffusers  # noqa: F401
from tests.test_flux import test_patches_leave_with_the_clone as test_forge_flux_patches_leave_with_the_clone  # noqa: F401
from tests.test_flux import test_true_cfg_uncond_rows_get_the_negative_projection as test_forge_flux_true_cfg  # noqa: F401
from tests.test_flux import test_two_units_add as test_forge_flux_two_units_add  # noqa: F401
from tests.test_flux_instantx import test_instantx_unit_equals_the_reference as test_forge_instantx  # noqa: F401
from tests.test_flux_instantx import test_region_mask_covers_image_tokens_only as test_forge_instantx_mask  # noqa: F401
from tests.test_flux_instantx import test_true_cfg_uncond_rows_get_the_black_image_tokens as test_forge_instantx_cfg  # noqa: F401
from tests.test_flux_redux import test_appended_tokens_equal_diffusers_with_the_longer_context as test_forge_redux  # noqa: F401
from tests.test_flux_redux import test_attention_bias_mode_equals_diffusers_with_comfyui_mask as test_forge_redux_bias  # noqa: F401
from tests.test_flux_redux import test_region_mask_reaches_only_the_masked_image_tokens as test_forge_redux_mask  # noqa: F401
from tests.test_flux_redux import test_true_cfg_uncond_rows_keep_their_context as test_forge_redux_cfg  # noqa: F401

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
def doubles(monkeypatch):
    """``backend.nn.flux`` is Forge's file for this module's tests; the rest of ``backend`` the
    doubles'. Named as ``test_flux.py``'s fixture, so its math tests imported below run here on
    Forge's transformer instead of the double."""
    monkeypatch.syspath_prepend(FORGE_DOUBLES)
    for name in ("backend.attention", "backend.nn"):  # the doubles, imported before Forge's file asks for them
        importlib.import_module(name)

    monkeypatch.setitem(sys.modules, "backend.utils", _utils_module())
    spec = importlib.util.spec_from_file_location("backend.nn.flux", FLUX_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "backend.nn.flux", module)
    spec.loader.exec_module(module)
    return module


def test_forge_source_is_loaded(doubles, tmp_path):
    s = Setup(tmp_path)
    assert type(s.double).__module__ == "backend.nn.flux" and type(s.double) is doubles.IntegratedFluxTransformer2DModel
    assert Path(sys.modules[type(s.double).__module__].__file__) == FLUX_FILE


def test_forge_flux_without_units_equals_diffusers(doubles, tmp_path):
    s = Setup(tmp_path)
    cond, _ = s.run(None)
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)
