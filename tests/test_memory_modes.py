"""A1111 with --medvram, --lowvram and --medvram-sdxl, on SD1.5 and SDXL, with the refiner, on a
second device.

The "GPU" is the fake GPU of tests/doubles/fake_gpu.py: tensors there keep their values and fail
loudly when an operation meets a CPU tensor, as CUDA does. The host is the doubles': the model
object of tests/doubles/sd_model.py, ``modules/lowvram.py`` (its forward pre-hooks move the text
encoder, the VAE and the UNet, or the UNet's blocks, between the CPU and the device),
``sd_models.load_model``/``reload_model_weights`` and ``apply_refiner`` (the refiner switch fires
``model_loaded_callback`` mid-sampling, as the real host does).

Every generation on the fake GPU is compared with the same generation on the CPU without flags
(the oracle): same numbers, and on top of that the K/V live on the device, the encoder ran there
and went back to the CPU with the projections, and no hook of ours is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from modules import devices, sd_models, shared

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.host import a1111
from tests.a1111_env import PLUS, image, run_job, sd_model, tiny_sdxl_unet, tiny_unet, unit_args
from tests.doubles.fake_gpu import GPU, fake_gpu, module_device_types
from tests.doubles.webui_sampling import Processing
from tests.factories import adapter_shapes, adapter_tensors

FLAGS = {
    "plain": {},
    "medvram": {"medvram": True},
    "lowvram": {"lowvram": True},
    "medvram_sdxl": {"medvram_sdxl": True},
}

SDXL_UNIT = {"image": image(1), "model": "tiny-sdxl-plus", "weight": 0.8}


def checkpoints() -> dict[str, object]:
    """The checkpoints the doubles' host can load: two of each base with the same config (a
    refiner loaded into the same model object), one with another config but the same layers (a
    new model object the adapter still fits), and SDXL's refiner (another context: it does not)."""
    ck = sd_models.checkpoint
    return {
        "sd15": ck("sd15", "v1-inference.yaml", lambda: tiny_unet(seed=0)),
        "sd15-other": ck("sd15-other", "v1-inference.yaml", lambda: tiny_unet(seed=5)),
        "sd15-new-config": ck("sd15-inpaint-like", "v1-other.yaml", lambda: tiny_unet(seed=6)),
        "sdxl": ck("sdxl", "sd_xl_base.yaml", lambda: tiny_sdxl_unet(seed=0), sdxl=True),
        "sdxl-other": ck("sdxl-other", "sd_xl_base.yaml", lambda: tiny_sdxl_unet(seed=7), sdxl=True),
        "sdxl-new-config": ck("sdxl-v-pred", "sd_xl_v.yaml", lambda: tiny_sdxl_unet(seed=8), sdxl=True),
        "sdxl-refiner": ck(
            "sdxl-refiner", "sd_xl_refiner.yaml", lambda: tiny_sdxl_unet(seed=9, context_dim=80), sdxl=True
        ),
    }


#: (base, refiner or None) → which refiner case it is.
CASES = {
    "sd15": ("sd15", None),
    "sd15+refiner_same_config": ("sd15", "sd15-other"),
    "sd15+refiner_new_model": ("sd15", "sd15-new-config"),
    "sdxl": ("sdxl", None),
    "sdxl+refiner_same_config": ("sdxl", "sdxl-other"),
    "sdxl+refiner_new_model": ("sdxl", "sdxl-new-config"),
    "sdxl+refiner_not_fitting": ("sdxl", "sdxl-refiner"),
}


@pytest.fixture
def host(webui, tmp_path):
    """The webui fixture plus an SDXL adapter, and the generation runner of this module."""
    widths = attn2_widths_of(tiny_sdxl_unet())
    shapes = adapter_shapes("resampler", 64, widths, 128, tokens=4, res_dim=32, inner=64)
    save_adapter_tensors(
        adapter_tensors(shapes, seed=11), tmp_path / "models" / "ipadapter" / "tiny-sdxl-plus.safetensors"
    )
    yield SimpleNamespace(script=webui.script, checkpoints=checkpoints())
    devices.device = devices.cpu


def attn2_widths_of(unet) -> tuple[int, ...]:
    return a1111.unet_layout(sd_model(unet, sdxl=True))[2].attn2_widths


@dataclass
class Run:
    samples: torch.Tensor
    errors: list[str]
    kv_devices: set[str]  # where the prepared K/V were stored, over every job of the run
    encoded_on: set[str]  # where the encoder ran
    model: object  # the model loaded at the end


def our_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def generate(
    host, base: str, refiner: str | None, flags: dict, gpu: bool, monkeypatch, clear: bool = True, **unit
) -> Run:
    """Load ``base`` as the WebUI does (with ``flags``), then one txt2img with a unit."""
    from modules import lowvram

    for name in ("medvram", "lowvram", "medvram_sdxl"):
        setattr(shared.cmd_opts, name, bool(flags.get(name)))
    devices.device = GPU if gpu else devices.cpu
    lowvram.module_in_gpu = None
    sd_models.model_data.sd_model = None
    info = host.checkpoints[base]
    model = sd_models.load_model(info)
    hooks_before = our_hooks(model)
    jobs, encoded_on = [], set()
    engine = a1111.engine()
    if clear:
        engine.embeddings.clear()  # every run encodes its reference (and shows where)
    prepare, encode = engine.prepare, ClipVisionEncoder.encode

    def spy_prepare(*args, **kwargs):
        jobs.append(prepare(*args, **kwargs))
        return jobs[-1]

    def spy_encode(self, pixels):
        out = encode(self, pixels)
        encoded_on.add(self.device.type)
        return out

    monkeypatch.setattr(engine, "prepare", spy_prepare)
    monkeypatch.setattr(ClipVisionEncoder, "encode", spy_encode)
    width = model.context_dim
    g = torch.Generator().manual_seed(7)
    cond, uncond = torch.randn(1, 77, width, generator=g), torch.randn(1, 77, width, generator=g)
    p = Processing(sd_model=model, cond=cond, uncond=uncond, repeats=[1], steps=3)
    if refiner is not None:
        p.refiner_checkpoint_info, p.refiner_switch_at = host.checkpoints[refiner], 0.5
        refined = host.checkpoints[refiner].build_unet()
        ctx = sd_model(refined).context_dim
        if ctx != width:
            p.refiner_cond, p.refiner_uncond = (
                torch.randn(1, 77, ctx, generator=g),
                torch.randn(1, 77, ctx, generator=g),
            )
    base_unit = SDXL_UNIT if info.sdxl else PLUS
    errors: list[str] = []
    samples = run_job(host.script, unit_args({**base_unit, **unit}), p, errors)
    monkeypatch.undo()
    loaded = shared.sd_model
    if loaded is model:
        assert our_hooks(model) == hooks_before  # lowvram's own hooks stay; ours are gone
    kv = {t.device.type for j in jobs for u in j.units for pair in u.kv.kv for t in pair}
    return Run(samples, errors, kv, encoded_on, loaded)


def check_resident(host) -> None:
    """After the generation nothing of ours is left on the device: encoders and projections."""
    loaded = [*a1111.engine().adapters.values(), *a1111.engine().encoders.values()]
    for value in loaded:
        module = value.model if isinstance(value, ClipVisionEncoder) else getattr(value, "projection", None)
        if module is not None:
            assert module_device_types(module) == {"cpu"}, type(value).__name__


def check_flag_run(host, base: str, refiner: str | None, name: str, run: Run, oracle: Run, out: str, oracle_out: str):
    assert not run.errors, run.errors
    lowvram_on = bool(FLAGS[name]) and (name != "medvram_sdxl" or host.checkpoints[base].sdxl)
    if refiner is None:
        assert getattr(run.model, "lowvram", False) is lowvram_on  # the flag really engaged lowvram.py
    torch.testing.assert_close(run.samples, oracle.samples, rtol=1e-5, atol=1e-5)
    assert run.kv_devices == {"meta"}, f"K/V prepared on {run.kv_devices}, not where the UNet runs"
    assert run.encoded_on == {"meta"}, f"encoded on {run.encoded_on}"
    check_resident(host)
    for line in ("applied to the refiner", "not applied after the switch"):
        assert (line in out) == (line in oracle_out), line


@torch.no_grad()
@pytest.mark.parametrize("case", list(CASES))
def test_memory_flags_on_a_second_device_equal_the_cpu(host, case, monkeypatch, capsys):
    base, refiner = CASES[case]
    oracle = generate(host, base, refiner, {}, False, monkeypatch)
    assert not oracle.errors, oracle.errors
    oracle_out = capsys.readouterr().out
    failed: dict[str, str] = {}
    with fake_gpu():
        for name, flags in FLAGS.items():
            try:
                run = generate(host, base, refiner, flags, True, monkeypatch)
                check_flag_run(host, base, refiner, name, run, oracle, capsys.readouterr().out, oracle_out)
            except Exception as exc:  # every flag is tried; all failures are reported together
                failed[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    assert not failed, "\n".join(f"{name}: {why}" for name, why in failed.items())
    if refiner is None:
        return
    # the unit acts after the switch exactly when the adapter fits the refiner: ending the unit
    # at the switch changes the image then, and gives the same image otherwise
    ended = generate(host, base, refiner, {}, False, monkeypatch, end=0.5)
    fits = refiner != "sdxl-refiner"
    assert ("applied to the refiner" in oracle_out) is fits
    assert ("not applied after the switch" in oracle_out) is not fits
    assert torch.equal(ended.samples, oracle.samples) is not fits


@torch.no_grad()
@pytest.mark.parametrize("refiner", ["sd15-other", "sd15-new-config"])
def test_faceid_lora_follows_the_unet_that_samples(host, refiner, tmp_path, monkeypatch):
    """A FaceID unit's LoRA is on the UNet that runs each step: the base's, then the refiner's
    (the same module with new weights, or a new model), never on a UNet that stopped sampling."""
    from modules import script_callbacks

    from tests.test_faceid import FACE, write_faceid_files

    write_faceid_files(tmp_path / "models", attn2_widths_of_sd15())
    seen: list[tuple[int, int]] = []
    base_unets: list = []

    def count(params):  # per step: LoRA hooks on the UNet sampling now, and on the base's if another
        now = shared.sd_model.model.diffusion_model
        base_unets.append(base_unets[0] if base_unets else now)
        seen.append((lora_hooks(now), lora_hooks(base_unets[0]) if base_unets[0] is not now else -1))

    script_callbacks.on_cfg_denoiser(count, name="test_count")
    run = generate(host, "sd15", refiner, {}, False, monkeypatch, image=FACE, model="tiny-faceid", weight=1.0)
    assert not run.errors, run.errors
    hooked = 4 * 2 * 16 + 16  # the LoRA on q, k, v, out of attn1 and attn2 × 16 blocks; our attn2 to_q taps
    assert [now for now, _ in seen] == [hooked] * 3
    assert all(old in (-1, 0) for _, old in seen)  # a UNet that stopped sampling has none left
    assert lora_hooks(run.model.model.diffusion_model) == 0  # and none after the generation


def attn2_widths_of_sd15() -> tuple[int, ...]:
    return a1111.unet_layout(sd_model(tiny_unet()))[2].attn2_widths


def lora_hooks(unet) -> int:
    return sum(len(m._forward_hooks) for m in unet.modules() if isinstance(m, torch.nn.Linear))


def encoder_devices() -> set[str]:
    found = [
        v
        for v in [*a1111.engine().adapters.values(), *a1111.engine().encoders.values()]
        if isinstance(v, ClipVisionEncoder)
    ]
    assert found
    return set().union(*(module_device_types(e.model) for e in found))


@torch.no_grad()
def test_the_encoder_goes_to_the_gpu_only_to_encode_and_the_setting_may_keep_it_there(host, monkeypatch):
    with fake_gpu():
        first = generate(host, "sd15", None, {}, True, monkeypatch)
        assert first.encoded_on == {"meta"} and encoder_devices() == {"cpu"}
        again = generate(host, "sd15", None, {}, True, monkeypatch, clear=False)  # the embedding is cached
        assert again.encoded_on == set() and encoder_devices() == {"cpu"}  # no trip to the GPU for nothing
        torch.testing.assert_close(again.samples, first.samples)
        shared.opts.ipadapter_offload_encoder = False  # the user keeps it on the GPU (faster, uses VRAM)
        generate(host, "sd15", None, {}, True, monkeypatch)
        assert encoder_devices() == {"meta"}
        generate(host, "sd15", None, {"medvram": True}, True, monkeypatch)  # --medvram: always off it
        assert encoder_devices() == {"cpu"}


@torch.no_grad()
@pytest.mark.parametrize(
    "base,refiner,hires_checkpoint,expected",
    [
        ("sd15", "sd15-new-config", None, ["applied to the refiner"]),
        ("sdxl", "sdxl-refiner", None, ["not applied after the switch to SDXL"]),
        ("sdxl", None, "sdxl-refiner", ["not applied to SDXL in this pass"]),
    ],
)
def test_hires_fix_with_the_refiner_in_both_passes_or_another_hires_checkpoint(
    host, monkeypatch, capsys, base, refiner, hires_checkpoint, expected
):
    """A1111 goes back to the generation's checkpoint (or to the hires checkpoint) between the
    passes, and may switch to the refiner again in the hires pass ("both passes"). The unit
    follows each model it fits; a model it does not fit gets a console line, not an error."""
    shared.opts.hires_fix_refiner_pass = "both passes"
    original = Processing.__init__

    def with_hires(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.enable_hr, self.hr_latent = True, 16
        if hires_checkpoint is not None:
            self.hr_checkpoint_info = host.checkpoints[hires_checkpoint]
            ctx = sd_model(self.hr_checkpoint_info.build_unet()).context_dim
            self.refiner_cond = self.refiner_uncond = torch.randn(
                1, 77, ctx, generator=torch.Generator().manual_seed(3)
            )

    monkeypatch.setattr(Processing, "__init__", with_hires)
    run = generate(host, base, refiner, {}, False, monkeypatch)
    assert not run.errors, run.errors
    out = capsys.readouterr().out
    for line in expected:
        assert line in out, out
    assert torch.isfinite(run.samples).all()


@torch.no_grad()
@pytest.mark.parametrize("mode", ["batched", "batch_cond_uncond_off", "skip_uncond_steps", "and_prompts_unbatched",
                                  "batch_size_2", "token_lengths_differ_unbatched", "img2img", "hires"])  # fmt: skip
def test_every_cfg_batching_under_lowvram_on_the_gpu_equals_the_cpu(webui, mode):
    """The CFG denoiser's ways of splitting rows into UNet calls (tests/test_a1111.py checks each
    row against the UNet alone on the CPU) give the same result with --lowvram on the fake GPU,
    where A1111 moves each UNet block to the device as it runs."""
    from modules import lowvram

    from tests.a1111_env import job
    from tests.test_a1111 import CFG_MODES

    options, kwargs = CFG_MODES[mode]
    for key, value in options.items():
        setattr(shared.opts, key, value)
    cpu = run_job(webui.script, unit_args(PLUS), job(sd_model(tiny_unet()), **kwargs))
    with fake_gpu():
        devices.device = GPU
        shared.cmd_opts.lowvram = True
        model = sd_model(tiny_unet())
        lowvram.apply(model)
        errors: list[str] = []
        gpu = run_job(webui.script, unit_args(PLUS), job(model, **kwargs), errors)
    assert not errors, errors
    assert model.lowvram and module_device_types(model.model.diffusion_model.middle_block) == {"cpu"}
    torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-5)
