"""Forge's hires pass: ``process_before_every_sampling`` runs once before Forge resets the UNet
patcher (tests/doubles/forge_sampling.py mirrors ``sample_hr_pass``), so the first pass's
patches are still on it. They are ours: replaced, never chained as "another patch"."""

from __future__ import annotations

import torch

from ipadapter_ext.host import common, forge
from ipadapter_ext.host.forge import attn2_patch as forge_patch
from tests.a1111_env import PLUS, unit_args
from tests.doubles.forge_sampling import run_forge_job
from tests.test_forge import REQUESTS, env, job, patched  # noqa: F401 (env is a fixture)


@torch.no_grad()
def test_the_pre_reset_hook_call_replaces_our_own_patches(env):  # noqa: F811
    first, p = patched(env, REQUESTS["plus"])
    p.is_hr_pass = True  # Forge calls the hook again before resetting forge_objects
    forge.before_sampling(p)
    second = p.sd_model.forge_objects.unet
    state = getattr(p, common.STATE_ATTR)
    assert state.error is None and not state.notes
    table = second.attn2_table()
    assert len(table) == 16 and all(patch.previous is None for patch in table.values())
    q, k, v = (torch.randn(2, 4, 32 * 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 3))
    extra = {"n_heads": 8, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([3.0]), "original_shape": [2, 4, 2, 2]}
    once = first.attn2_table()[("middle", 0, 0)](q, k, v, extra)
    # same weights and inputs, one image term either way (a chained copy of ours would add it twice)
    assert torch.equal(table[("middle", 0, 0)](q, k, v, extra), once)


@torch.no_grad()
def test_a_hires_job_prints_no_other_patch_line(env, capsys):  # noqa: F811
    p = job(env, enable_hr=True)
    errors: list[str] = []
    run_forge_job(env.script, unit_args(PLUS), p, errors)
    out = capsys.readouterr().out
    assert errors == [] and "IP-Adapter: unit 1" in out
    assert "another attn2 patch" not in out and "also active" not in out
    final = p.sd_model.forge_objects.unet.attn2_table()
    assert all(isinstance(x, forge_patch.Attn2Patch) and x.previous is None for x in final.values())
