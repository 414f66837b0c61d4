"""The Forge family's list of loaded models after our generations (``host/forge/loaded_models.py``),
on test_forge.py's ``env`` (Forge 2); test_forge1.py collects the same test on Forge 1's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from modules import script_callbacks

from ipadapter_ext.host.forge import attn2_patch as forge_patch
from tests.a1111_env import PLUS, unit_args
from tests.doubles.forge_sampling import run_forge_job
from tests.test_forge import env, job  # noqa: F401 (env is a fixture)


@torch.no_grad()
def test_no_generation_leaves_an_entry_of_ours_in_the_hosts_loaded_models(env):  # noqa: F811
    """Forge (on the CPU), Forge Classic and ersatzForge take an entry off their list of loaded
    models only for a clone's load or for room on a GPU, and every generation with a unit hands them
    a new K/V module: the Forge soak counted one entry more per generation. The K/V module is on the
    list while the pass samples and off it when the pass ends (hires, an exception included); the
    UNet's entry and another extension's stay."""
    from ipadapter_ext.host.forge.flux_context import _TokenModule

    loaded = env.state.readers.loaded_models()
    loaded.clear()
    other = SimpleNamespace(model=SimpleNamespace(model=torch.nn.Linear(1, 1)))  # another extension's entry
    loaded.append(other)
    ours = (forge_patch.KVModule, _TokenModule)
    during: list[int] = []

    def count(params):
        during.append(sum(isinstance(getattr(e.model, "model", None), ours) for e in loaded))

    script_callbacks.on_cfg_denoiser(count, name="test_count_loaded")
    try:
        for p in (job(env), job(env, enable_hr=True), job(env)):
            run_forge_job(env.script, unit_args(PLUS), p)
            assert [e for e in loaded if isinstance(e.model.model, ours)] == []
            assert len(loaded) == 2 and other in loaded  # the UNet's clone replaced its previous one
            assert p.sd_model.forge_objects.unet.is_clone(loaded[0].model)
        with pytest.raises(RuntimeError, match="sampling failed at step 1"):
            run_forge_job(env.script, unit_args(PLUS), job(env, fail_at_step=1))
        assert [e for e in loaded if isinstance(e.model.model, ours)] == [] and other in loaded
    finally:
        script_callbacks.callbacks["cfg_denoiser"].pop()
    steps = 3 * (1 + 2 + 1) + 1  # first passes, the hires job's two passes, the failing job's first step
    assert during == [1] * steps  # loaded with the pass's clone, one at a time
