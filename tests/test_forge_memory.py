"""Forge with its memory management and the refiner, on a second device.

The "GPU" is the fake GPU of tests/doubles/fake_gpu.py (values kept, mixing devices fails as on
CUDA). The host is the doubles' Forge: a UNet patcher offloaded to the CPU and loaded to the GPU by
memory management when sampling starts (``sampling_prepare``, after ``process_before_every_sampling``),
with the patchers it carries for sampling (our K/V module); the refiner switch of
``apply_refiner`` (a new model with an unpatched ``forge_objects.unet``, loaded by
``sampling_prepare`` before ``on_cfg_denoiser`` runs).

Each generation on the fake GPU equals the same one on the CPU. On top: the K/V were where
Forge put them (no per-call copies), the encoder ran on the device and went back to the CPU with
the projections, a FaceID unit's LoRA is on the UNet that samples (the refiner's after the switch)
and its memory is what the clone asks Forge to keep free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from modules import devices, shared

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.host import forge
from ipadapter_ext.host.forge import attn2_patch
from tests.a1111_env import CTX, PLUS, attn2_widths, make_webui, tiny_unet, unit_args
from tests.doubles.fake_gpu import GPU, fake_gpu, module_device_types
from tests.doubles.forge_backend import unet_patcher
from tests.doubles.forge_sampling import ForgeModel, ForgeProcessing, run_forge_job

FORGE_DOUBLES = str(Path(__file__).parent / "doubles" / "forge")


@dataclass(eq=False)
class Checkpoint:
    """What Forge's loader builds a model from (``forge_model_reload``)."""

    title: str
    build_unet: object

    @property
    def short_title(self) -> str:
        return self.title

    def build(self) -> ForgeModel:
        return ForgeModel(unet_patcher(self.build_unet()), info=self)


CHECKPOINTS = {
    "base": Checkpoint("base", lambda: tiny_unet(seed=0)),
    "fitting": Checkpoint("fitting-refiner", lambda: tiny_unet(seed=5)),
    "other": Checkpoint("other-refiner", lambda: tiny_unet(seed=6, context_dim=64)),
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)
    webui = make_webui(tmp_path, monkeypatch)
    base = next(webui)
    from tests.test_faceid import write_faceid_files

    write_faceid_files(tmp_path / "models", attn2_widths(tiny_unet()))
    yield SimpleNamespace(script=base.script)
    devices.device = devices.cpu
    webui.close()


@dataclass
class Run:
    samples: torch.Tensor
    errors: list[str]
    copies: int  # K/V copied to the query's device per call (they were not where Forge put them)
    encoded_on: set[str]
    preserved: list[int]  # hard_memory_preservation of each load
    kv_loaded: int  # loads of a K/V module by memory management
    kv_left: int  # K/V modules still in memory management's list of loaded models after the job
    lora_on: dict[str, int]  # hooked attention Linears per UNet when the last step ran


def generate(env, monkeypatch, refiner: str | None = None, gpu: bool = False, flavour=None, **unit) -> Run:
    from backend import memory_management

    memory_management.reset()
    devices.device = GPU if gpu else devices.cpu
    base = CHECKPOINTS["base"].build()
    unets = {"base": base.forge_objects.unet.model.diffusion_model}
    engine = forge.engine()
    engine.embeddings.clear()
    copies, encoded_on, lora_on = [0], set(), {}
    on_device, encode = attn2_patch._on_device, ClipVisionEncoder.encode

    def spy_on_device(term, device):
        copies[0] += term.k.device != device
        return on_device(term, device)

    def spy_encode(self, pixels):
        out = encode(self, pixels)
        encoded_on.add(self.device.type)  # where it ran (it moves there to encode)
        return out

    monkeypatch.setattr(attn2_patch, "_on_device", spy_on_device)
    monkeypatch.setattr(ClipVisionEncoder, "encode", spy_encode)
    g = torch.Generator().manual_seed(7)
    p = ForgeProcessing(
        sd_model=base, cond=torch.randn(1, 77, CTX, generator=g), uncond=torch.randn(1, 77, CTX, generator=g)
    )
    if flavour is not None:
        p.flavour = flavour
    if refiner is not None:
        p.refiner_checkpoint_info, p.refiner_switch_at = CHECKPOINTS[refiner], 0.5
        p.refiner_cond = p.refiner_uncond = torch.randn(1, 77, 64, generator=g)

    def count_lora(params):  # every step: which UNet carries the LoRA now
        lora_on.clear()
        unets["now"] = shared.sd_model.forge_objects.unet.model.diffusion_model
        for name, unet in unets.items():
            lora_on[name] = sum(len(m._forward_hooks) for m in unet.modules() if isinstance(m, torch.nn.Linear))

    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(count_lora, name="test_count_lora")
    errors: list[str] = []
    try:
        samples = run_forge_job(env.script, unit_args({**PLUS, **unit}), p, errors)
    finally:
        script_callbacks.callbacks["cfg_denoiser"].pop()
        monkeypatch.undo()
    calls = memory_management.calls
    kv = sum(isinstance(m.model, attn2_patch.KVModule) for models, _ in calls for m in models)
    left = sum(isinstance(e.model.model, attn2_patch.KVModule) for e in memory_management.current_loaded_models)
    return Run(samples, errors, copies[0], encoded_on, [c[1] for c in calls], kv, left, dict(lora_on))


def check_resident() -> None:
    for value in [*forge.engine().adapters.values(), *forge.engine().encoders.values()]:
        module = value.model if isinstance(value, ClipVisionEncoder) else getattr(value, "projection", None)
        if module is not None:
            assert module_device_types(module) == {"cpu"}, type(value).__name__


UNITS = {
    "plus": {},
    "faceid": {"image": None, "model": "tiny-faceid", "weight": 1.0},
}


@torch.no_grad()
@pytest.mark.parametrize("refiner", [None, "fitting", "other"])
@pytest.mark.parametrize("unit", list(UNITS))
def test_forge_on_a_second_device_with_the_refiner(env, monkeypatch, capsys, unit, refiner):
    from tests.test_faceid import FACE

    fields = dict(UNITS[unit])
    if unit == "faceid":
        fields["image"] = FACE
    oracle = generate(env, monkeypatch, refiner, **fields)
    assert not oracle.errors, oracle.errors
    oracle_out = capsys.readouterr().out
    with fake_gpu():
        run = generate(env, monkeypatch, refiner, gpu=True, **fields)
    assert not run.errors, run.errors
    torch.testing.assert_close(run.samples, oracle.samples, rtol=1e-5, atol=1e-5)
    assert run.copies == 0  # the K/V were where Forge's memory management loaded them
    assert run.encoded_on == ({"meta"} if unit == "plus" else set())  # FaceID: face analysis only
    check_resident()
    out = capsys.readouterr().out
    fits = refiner != "other"
    assert ("applied to the refiner" in out) is (refiner == "fitting")
    assert ("not applied after the switch" in out) is (refiner == "other")
    assert run.kv_loaded == (2 if refiner == "fitting" else 1)  # the refiner's clone brought its K/V module
    assert run.kv_left == 0  # and both were taken off the host's list when the pass ended
    if unit == "faceid":
        # the LoRA is on the UNet that samples; its memory was declared to Forge at each load
        expected_on_now = 0 if refiner == "other" else 4 * 2 * 16
        assert run.lora_on["now"] == expected_on_now, run.lora_on
        if refiner is not None:
            assert run.lora_on["base"] == 0, run.lora_on  # not left on the base model's UNet
        lora = forge.engine()._adapter("tiny-faceid").lora
        assert run.preserved[0] == lora.nbytes(torch.float32) > 0
        if refiner == "fitting":
            assert run.preserved[-1] == run.preserved[0]
    if refiner is not None:
        ended = generate(env, monkeypatch, refiner, **fields, end=0.5)
        assert torch.equal(ended.samples, oracle.samples) is not fits
    assert out.count("IP-Adapter: unit 1") == 1 and oracle_out.count("IP-Adapter: unit 1") == 1


@torch.no_grad()
def test_a_host_that_runs_the_scripts_at_the_refiner_switch(env, monkeypatch, capsys):
    """ersatzForge fca12a2 calls ``process_before_every_sampling`` on the refiner right after loading
    it; the unit goes onto the refiner there (the same samples as Forge's switch in on_cfg_denoiser)
    and the console still says so."""
    from tests.doubles.forge_sampling import ERSATZ

    forge_like = generate(env, monkeypatch, "fitting")
    capsys.readouterr()
    ersatz_like = generate(env, monkeypatch, "fitting", flavour=ERSATZ)
    assert not ersatz_like.errors, ersatz_like.errors
    out = capsys.readouterr().out
    assert out.count("IP-Adapter: applied to the refiner") == 1, out
    assert ersatz_like.kv_loaded == forge_like.kv_loaded == 2
    torch.testing.assert_close(ersatz_like.samples, forge_like.samples, rtol=1e-5, atol=1e-5)
