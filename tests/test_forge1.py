"""The real scripts/ipadapter.py on the Forge 1 family (reForge main, Forge Classic), through the
doubles of its patcher contract (tests/doubles/forge1_patcher.py: ``ldm_patched``'s model patcher,
model objects and transformer block; tests/doubles/forge1/: the modules the host is told by).

The generation tests of test_forge.py (CFG rows against the A1111 path, clone and keys, the
built-in IP-Adapter chained, start/end, sigma gating, errors, API and infotext with hires, weight 0
bit-identical, K/V placement, a batch of init images, FaceID with its LoRA, an exception mid-way)
and of test_forge_hires.py run here again, unchanged, on this module's ``env``: once with reForge's
kernel (``attn_precision``), once with Forge Classic's. Below them, what only Forge 1 has: how it
is detected, the kernel's arguments, ``model_sampling``, ``manual_cast_dtype``, no Flux.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.host import common, forge, forge1
from ipadapter_ext.host.forge1.readers import FORGE1
from tests.a1111_env import CTX, PLUS, image, make_webui, unit_args
from tests.doubles import forge1_patcher
from tests.doubles.forge_sampling import forge1_flavour, run_forge_job
from tests.test_forge import (  # noqa: F401 (the shared generation tests, collected here on Forge 1's env)
    REQUESTS,
    family_env,
    job,
    patched,
    test_a_faceid_unit_with_its_lora_on_forge,
    test_a_patch_already_on_the_key_is_chained_and_keeps_its_contribution,
    test_an_exception_during_sampling_leaves_nothing_behind,
    test_calls_the_denoiser_did_not_report_are_gated_by_sigma,
    test_clone_leaves_the_original_patcher_untouched_and_keys_every_layer,
    test_errors_surface_before_sampling,
    test_forge_patch_equals_the_a1111_path,
    test_kv_module_moves_the_tensors_the_units_read,
    test_pulid_on_the_key_is_chained_and_named,
    test_same_api_units_and_infotext_as_a1111,
    test_several_init_images_each_reference_their_own_image,
    test_start_end_follow_the_step_fraction_like_a1111,
    test_weight_zero_is_bit_identical_and_registered_once,
)
from tests.test_forge_hires import (  # noqa: F401
    test_a_hires_job_prints_no_other_patch_line,
    test_the_pre_reset_hook_call_replaces_our_own_patches,
)
from tests.test_forge_loaded_models import (  # noqa: F401
    test_no_generation_leaves_an_entry_of_ours_in_the_hosts_loaded_models,
)

FORGE1_DOUBLES = str(Path(__file__).parent / "doubles" / "forge1")


@pytest.fixture(params=["reforge", "classic"])
def env(request, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(FORGE1_DOUBLES)  # makes the host look like Forge 1 when the script loads
    from ldm_patched.ldm.modules import attention

    precision_argument = request.param == "reforge"
    if not precision_argument:  # Forge Classic's kernel takes no attn_precision
        monkeypatch.setattr(attention, "optimized_attention", attention.classic_attention)
    attention.calls.clear()
    webui = make_webui(tmp_path, monkeypatch)
    base = next(webui)
    patcher = forge1_patcher.unet_patcher(base.unet)
    flavour = forge1_flavour(precision_argument)
    built = family_env(base, patcher, forge1.Forge1State, flavour, flavour.forward, FORGE1.attention)
    built.variant, built.attention = request.param, attention
    yield built
    webui.close()


def test_the_script_picks_the_forge1_host(env, monkeypatch, tmp_path):
    import sys

    from ipadapter_ext.host import family_key, is_forge, select, startup_line

    assert is_forge() and family_key() == "forge1" and select() is forge1
    p = job(env)
    env.script.process(p, *unit_args(PLUS))  # the script make_webui loaded chose it too
    assert type(getattr(p, common.STATE_ATTR)) is forge1.Forge1State
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", SimpleNamespace(version="1.0.0v2-v1.10.1RC"))
    line = startup_line()
    assert line.startswith("IP-Adapter: host family Forge 1 (reForge, Forge Classic)")
    assert "modules_forge.unet_patcher, ldm_patched.modules.model_patcher" in line and "1.0.0v2-v1.10.1RC" in line
    # a modules_forge without either family's patcher: said in words, never taken for Forge 2
    bare = tmp_path / "bare"
    (bare / "modules_forge").mkdir(parents=True)
    (bare / "modules_forge" / "__init__.py").write_text("")
    monkeypatch.setattr("sys.path", [str(bare)] + [p for p in sys.path if p != FORGE1_DOUBLES])
    assert family_key() == "a1111" and "an unknown fork" in startup_line()


@torch.no_grad()
def test_the_patch_calls_the_kernel_as_the_hosts_own_layer_does(env):
    """reForge's kernel gets the block's ``attn_precision`` (a model that upcasts sets float32 there),
    Forge Classic's gets none; with or without our patches the calls are the same, and weight 0 is
    the unpatched output bit for bit."""
    for module in env.unet.modules():
        if hasattr(module, "attn2"):
            module.attn_precision = torch.float32
    clone, _ = patched(env, [UnitRequest(1, [image(1)], "tiny-plus", weight=0.0)])
    g = torch.Generator().manual_seed(3)
    x, ctx, t = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, CTX, generator=g), torch.full((2,), 500)
    to = dict(clone.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=torch.tensor([3.0]))
    env.attention.calls.clear()
    out = env.forward(env.unet, x, t, ctx, to)
    patched_calls = list(env.attention.calls)
    env.attention.calls.clear()
    plain = env.forward(env.unet, x, t, ctx, {})
    assert torch.equal(out, plain)
    assert len(patched_calls) == len(env.attention.calls) == 2 * 16  # attn1 and attn2 of every block
    if env.variant == "reforge":
        assert all(c["attn_precision"] is torch.float32 for c in patched_calls)
    else:
        assert all(c.get("classic") for c in patched_calls)


def test_sigma_ranges_come_from_model_sampling_and_its_object_patch(env):
    requests = [UnitRequest(1, [image(1)], "tiny-plus", weight=0.8, start=0.2, end=0.6)]
    schedule = env.patcher.model.model_sampling
    assert not hasattr(env.patcher.model, "predictor")  # Forge 2's name: absent here
    clone, _ = patched(env, requests)
    run = clone.attn2_table()[("middle", 0, 0)].run
    assert run.sigma_ranges == [(schedule.percent_to_sigma(0.2), schedule.percent_to_sigma(0.6))]
    assert 0.0 < run.sigma_ranges[0][1] < run.sigma_ranges[0][0] < 100.0

    class Shifted(forge1_patcher.ModelSamplingDiscrete):  # what an advanced-sampling extension patches in
        def percent_to_sigma(self, percent):
            return 2.0 * super().percent_to_sigma(percent)

    base = env.patcher.clone()
    base.add_object_patch("model_sampling", Shifted())
    env.model.forge_objects_after_applying_lora.unet = base
    env.model.forge_objects = env.model.forge_objects_after_applying_lora.shallow_copy()
    clone, _ = patched(env, requests)
    run = clone.attn2_table()[("middle", 0, 0)].run
    assert run.sigma_ranges == [(2 * schedule.percent_to_sigma(0.2), 2 * schedule.percent_to_sigma(0.6))]


@pytest.mark.parametrize(
    ("manual_cast", "object_patch", "expected"),
    [
        (None, None, torch.float32),  # get_dtype(): the UNet's own
        (torch.bfloat16, None, torch.bfloat16),  # weights cast for compute
        (torch.bfloat16, torch.float16, torch.float16),  # set_model_compute_dtype on this clone
    ],
)
def test_kv_dtype_is_the_dtype_the_unet_computes_in(env, manual_cast, object_patch, expected):
    base = forge1_patcher.unet_patcher(env.unet, manual_cast_dtype=manual_cast)
    if object_patch is not None:
        base.add_object_patch("manual_cast_dtype", object_patch)
    assert forge1.forge1_placement(base).dtype == expected
    env.model.forge_objects_after_applying_lora.unet = base
    env.model.forge_objects = env.model.forge_objects_after_applying_lora.shallow_copy()
    clone, _ = patched(env, REQUESTS["plus"])
    (extra,) = clone.extra_model_patchers_during_sampling
    assert {b.dtype for b in extra.model.buffers()} == {expected}


def test_a_flux_model_is_refused_in_words(env):
    flux = SimpleNamespace(double_blocks=[], single_blocks=[], txt_in=torch.nn.Linear(4, 4))
    base = forge1_patcher.UnetPatcher(forge1_patcher.BaseModel(flux), torch.device("cpu"), torch.device("cpu"))
    env.model.forge_objects_after_applying_lora.unet = base
    env.model.forge_objects = env.model.forge_objects_after_applying_lora.shallow_copy()
    p = job(env)
    p.sampler = SimpleNamespace(sample=lambda *a, **k: None)
    setattr(p, common.STATE_ATTR, forge1.Forge1State(REQUESTS["plus"]))
    forge.before_sampling(p)
    error = getattr(p, common.STATE_ATTR).error
    assert error is not None and "Forge 1" in str(error) and "Flux" in str(error)
    assert p.sd_model.forge_objects.unet is base  # nothing was patched


@torch.no_grad()
def test_a_job_through_the_forge1_sampling_path_changes_the_image(env):
    """End to end on the doubles: ``uuids`` in the options, model_sampling's sigmas, one hook call
    per pass; the unit changes the output and the next job without it is the baseline."""
    plain = run_forge_job(env.script, unit_args(enabled=False), job(env))
    p = job(env)
    ours = run_forge_job(env.script, unit_args(PLUS), p)
    assert not torch.allclose(ours, plain) and len(p.samplers) == 1
    assert torch.equal(run_forge_job(env.script, unit_args(enabled=False), job(env)), plain)


@pytest.mark.parametrize("moved", [False, True])
def test_the_hosts_controlnet_folders_follow_its_command_line(tmp_path, monkeypatch, moved):
    """Forge's families keep their ControlNet and preprocessor folders in ``modules_forge/shared.py``
    (``--controlnet-dir``, ``--controlnet-preprocessor-models-dir``); the model list and the face
    packs look there, and in ``models/`` when the host has no such module."""
    import sys

    import modules.paths_internal as paths_internal

    from ipadapter_ext.host import models

    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "models"))
    if moved:
        shared = SimpleNamespace(controlnet_dir=str(tmp_path / "cn"), preprocessor_dir=str(tmp_path / "pre"))
        monkeypatch.setitem(sys.modules, "modules_forge.shared", shared)
        expected = (tmp_path / "cn", tmp_path / "pre")
    else:
        monkeypatch.delitem(sys.modules, "modules_forge.shared", raising=False)
        expected = (tmp_path / "models" / "ControlNet", tmp_path / "models" / "ControlNetPreprocessor")
    models._EngineHolder.reset()
    try:
        assert models.engine().registry.controlnet_dirs[0] == expected[0]
        assert models.face_pack_roots(tmp_path / "models")[1] == expected[1]
    finally:
        models._EngineHolder.reset()
