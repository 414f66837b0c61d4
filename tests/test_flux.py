"""XLabs Flux IP-Adapters: detection from tensors, and our path on the double of Forge's Flux
(object patches + unet function wrapper on a patcher clone, tests/doubles/forge_flux_sampling.py)
against diffusers' ``FluxTransformer2DModel`` with the same weights and the same adapter files
loaded by diffusers' own Flux IP-Adapter loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.errors import IncompatibleModelError, ModelFileError
from ipadapter_ext.core.job import PreparedUnit
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.compat import UNetSignature, check_unet
from ipadapter_ext.core.load.detect import detect_adapter
from ipadapter_ext.core.load.formats import AdapterTensors, save_adapter_tensors, split_adapter
from ipadapter_ext.core.load.registry import ModelRegistry
from ipadapter_ext.core.project.projections import EncodedImages
from ipadapter_ext.host.forge import flux as forge_flux
from ipadapter_ext.host.forge.attn2_patch import ForgeRun, StepClock
from tests.factories import adapter_shapes
from tests.flux_env import (
    DOUBLE,
    EMBED,
    HIDDEN,
    LATENT_C,
    POOLED,
    TXT,
    diffusers_out,
    load_into_diffusers,
    save_xlabs,
    set_diffusers_scales,
    twin_models,
    xlabs_tensors,
)

FORGE_DOUBLES = str(Path(__file__).parent / "doubles" / "forge")
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture
def doubles(monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)


def _shapes(flat: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flat.items()}


# -- detection ----------------------------------------------------------------------------------
def _diffusers_names(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    proj, kv = split_adapter(flat)
    return {**{f"image_proj.{k}": v for k, v in proj.items()}, **{f"ip_adapter.{k}": v for k, v in kv.items()}}


@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("style", ["xlabs", "diffusers", "adapter_modules"])
def test_flux_adapter_detected_from_tensors_in_every_key_style(style, tokens):
    flat = xlabs_tensors(tokens, blocks=19)
    if style != "xlabs":
        flat = _diffusers_names(flat)
    if style == "adapter_modules":
        flat = {k.replace("ip_adapter.", "adapter_modules.", 1): v for k, v in flat.items()}
    info = detect_adapter(_shapes(flat), "flux-ip-adapter.safetensors")
    assert (info.arch, info.family, info.tokens, info.context_dim) == ("flux", "Flux", tokens, TXT)
    assert info.layer_widths == (HIDDEN,) * 19 and info.encoder.width == EMBED
    assert (
        info.describe()
        == f"XLabs Flux IP-Adapter · {tokens} tokens · needs a CLIP vision encoder with 40-wide image embeds"
    )


def test_description_names_vit_l_for_768_wide_embeds():
    info = detect_adapter(_shapes(xlabs_tensors(4, embed=768)), "ip_adapter.safetensors")
    assert info.describe() == "XLabs Flux IP-Adapter · 4 tokens · needs CLIP ViT-L/14"


def test_file_formats_load_the_same_model(tmp_path):
    flat = xlabs_tensors()
    save_xlabs(tmp_path / "xlabs.safetensors")
    proj, kv = split_adapter(flat)
    save_adapter_tensors(AdapterTensors(proj, kv), tmp_path / "diffusers.bin")
    a = IPAdapterModel.from_file(tmp_path / "xlabs.safetensors")
    b = IPAdapterModel.from_file(tmp_path / "diffusers.bin")
    assert a.info == b.info
    for x, y in zip(a.to_k + a.to_k_bias + a.to_v_bias, b.to_k + b.to_k_bias + b.to_v_bias, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.to_k[1], flat["double_blocks.1.processor.ip_adapter_double_stream_k_proj.weight"])
    assert torch.equal(a.to_v_bias[0], flat["double_blocks.0.processor.ip_adapter_double_stream_v_proj.bias"])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.pop("double_blocks.1.processor.ip_adapter_double_stream_v_proj.bias"), "with bias"),
        (lambda f: f.pop("double_blocks.0.processor.ip_adapter_double_stream_k_proj.bias"), "not 0, 1, 2"),
        (lambda f: f.update({"ip_adapter_proj_model.norm.weight": torch.ones(7)}), "no whole number"),
        (lambda f: f.update({"ip_adapter_proj_model.latents": torch.ones(1, 4, TXT)}), "unknown image projection"),
    ],
)
def test_damaged_flux_files_are_named(damage, message):
    flat = xlabs_tensors()
    damage(flat)
    with pytest.raises(ModelFileError, match=message):
        detect_adapter(_shapes(flat), "broken.safetensors")


def test_variant_overrides_cannot_cross_families():
    sd = adapter_shapes("base", 48, (32,) * 16, 40)
    with pytest.raises(ModelFileError, match="cannot be 'xlabs-flux'"):
        detect_adapter(sd, "sd.safetensors", override="xlabs-flux")
    with pytest.raises(ModelFileError, match="XLabs Flux IP-Adapter, so it cannot be 'light'"):
        detect_adapter(_shapes(xlabs_tensors()), "flux.safetensors", override="light")


def test_registry_lists_flux_adapters(tmp_path):
    save_xlabs(tmp_path / "flux-ip-adapter-v2.safetensors", tokens=16)
    entry = ModelRegistry([tmp_path], []).adapter("flux-ip-adapter-v2")
    assert entry.info is not None and entry.description.startswith("XLabs Flux IP-Adapter · 16 tokens · needs")


def test_family_checks_name_both_sides():
    flux_info = detect_adapter(_shapes(xlabs_tensors()), "f")
    sd_info = detect_adapter(adapter_shapes("base", 768, (320,) * 16, 1024), "s")
    flux = UNetSignature(TXT, (HIDDEN,) * DOUBLE, "Flux", arch="flux")
    sd = UNetSignature(768, (320,) * 16, "SD1.5")
    with pytest.raises(IncompatibleModelError, match=r"'s' is an SD1\.5 IP-Adapter .*the loaded checkpoint is Flux"):
        check_unet(sd_info, flux, "'s'")
    with pytest.raises(IncompatibleModelError, match=r"'f' is a Flux IP-Adapter .*checkpoint is SD1\.5.*in Forge"):
        check_unet(flux_info, sd, "'f'")
    with pytest.raises(IncompatibleModelError, match="3 double blocks"):
        check_unet(flux_info, UNetSignature(TXT, (HIDDEN,) * 3, "Flux", arch="flux"), "'f'")
    check_unet(flux_info, flux)


# -- math against diffusers ---------------------------------------------------------------------
class Setup:
    """Twin models, inputs, and units built from adapter files the way the engine builds them."""

    def __init__(self, tmp_path: Path, n_adapters: int = 1, batch: int = 1):
        from tests.doubles.forge_flux_sampling import FluxConds, MemoryManagement, flux_patcher

        self.reference, self.double = twin_models()
        self.patcher = flux_patcher(self.double)
        self.memory = MemoryManagement()
        self.paths = [save_xlabs(tmp_path / f"a{i}.safetensors", seed=10 + i) for i in range(n_adapters)]
        self.adapters = [IPAdapterModel.from_file(p) for p in self.paths]
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(batch, LATENT_C, 6, 8, generator=g)
        self.sigma = torch.full((batch,), 0.6)
        self.embeds = [torch.randn(batch, EMBED, generator=g) for _ in self.paths]
        self.black = [torch.randn(1, EMBED, generator=g) for _ in self.paths]  # stands in for a black image's
        self.cond = FluxConds(torch.randn(batch, 5, TXT, generator=g), torch.randn(batch, POOLED, generator=g), torch.full((batch,), 3.5))  # fmt: skip
        self.uncond = FluxConds(torch.randn(batch, 5, TXT, generator=g), torch.randn(batch, POOLED, generator=g), torch.full((batch,), 3.5))  # fmt: skip

    def unit(self, i: int, weight: float, **kw) -> PreparedUnit:
        adapter = self.adapters[i]
        cond = adapter.project(EncodedImages(image_embeds=self.embeds[i][:1])).reshape(1, -1, TXT)
        uncond = adapter.project(EncodedImages(image_embeds=self.black[i])).reshape(1, -1, TXT)
        return PreparedUnit(i + 1, adapter, UnitKV(adapter, cond, uncond, "cpu", torch.float32), weight, **kw)

    def run(self, units, clock: StepClock | None = None, uncond: bool = False, batching=((1, 0),), context=None):
        """Forge's outputs (denoised) for cond and uncond; ``context``: Redux units."""
        from ipadapter_ext.host.forge.flux_context import ContextUnits, attention_namespace
        from tests.doubles.forge_flux_sampling import calc_cond_uncond_batch

        patcher = self.patcher
        if units is not None or context is not None:
            units = units or []
            clock = clock or StepClock()
            run = ForgeRun(units, [(1.0, 0.0)] * len(units), clock)
            redux = None
            if context is not None:
                redux = ContextUnits(
                    context, ForgeRun(context, [(1.0, 0.0)] * len(context), clock), attention_namespace(self.double)
                )
            patcher, _ = forge_flux.patched_clone(self.patcher, run, redux)
        self.memory.load(patcher)
        with torch.no_grad():
            return calc_cond_uncond_batch(
                patcher, self.cond, self.uncond if uncond else None, self.x, self.sigma, [list(b) for b in batching]
            )

    def oracle(self, embeds: list[torch.Tensor] | None, which: str = "cond", extra=None, mask=None) -> torch.Tensor:
        """diffusers' denoised output; ``extra``: tokens appended to the context, ``mask``: an
        additive attention bias over ``[context, image]``."""
        c = self.cond if which == "cond" else self.uncond
        ip = None if embeds is None else [e[:, None] for e in embeds]
        context = (
            c.context if extra is None else torch.cat((c.context, extra.expand(c.context.shape[0], -1, -1)), dim=1)
        )
        out = diffusers_out(self.reference, self.x, self.sigma, context, c.y, c.guidance, ip, mask)
        return self.x - out * self.sigma.view(-1, 1, 1, 1)  # Forge's flux denoised


@pytest.mark.parametrize("weight", [1.0, 0.6, 0.0])
def test_one_unit_equals_diffusers(doubles, tmp_path, weight):
    s = Setup(tmp_path)
    load_into_diffusers(s.reference, s.paths, [weight])
    cond, _ = s.run([s.unit(0, weight)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    baseline, _ = s.run(None)
    if weight == 0:
        assert torch.equal(cond, baseline)  # no term at all: bit-identical to no adapter
    else:
        assert (cond - baseline).abs().max() > 1e-3


@pytest.mark.parametrize("batching", [((1, 0),), ((1,), (0,))])
def test_true_cfg_uncond_rows_get_the_negative_projection(doubles, tmp_path, batching):
    s = Setup(tmp_path, batch=2)
    load_into_diffusers(s.reference, s.paths, [0.8])
    s.embeds = [torch.cat([e[:1], e[:1]]) for e in s.embeds]  # one reference for the batch
    cond, uncond = s.run([s.unit(0, 0.8)], uncond=True, batching=batching)
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    negative = [b.expand(2, -1) for b in s.black]
    torch.testing.assert_close(uncond, s.oracle(negative, "uncond"), rtol=RTOL, atol=ATOL)


def test_two_units_add(doubles, tmp_path):
    s = Setup(tmp_path, n_adapters=2)
    load_into_diffusers(s.reference, s.paths, [0.7, 1.2])
    cond, _ = s.run([s.unit(0, 0.7), s.unit(1, 1.2)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)
    set_diffusers_scales(s.reference, [0.7, 0.0])  # unit 2 at weight 0 drops out on both sides
    cond, _ = s.run([s.unit(0, 0.7), s.unit(1, 0.0)])
    torch.testing.assert_close(cond, s.oracle(s.embeds), rtol=RTOL, atol=ATOL)


def test_patches_leave_with_the_clone(doubles, tmp_path):
    s = Setup(tmp_path)
    baseline, _ = s.run(None)
    patched, _ = s.run([s.unit(0, 1.0)])
    block = s.double.double_blocks[0]
    assert isinstance(block.forward, forge_flux.FluxBlockPatch)
    after, _ = s.run(None)  # the original patcher loads: the clone is unloaded, its patches restored
    assert torch.equal(after, baseline) and not torch.equal(patched, baseline)
    assert not isinstance(block.forward, forge_flux.FluxBlockPatch)
    assert not isinstance(block.img_attn.norm.forward, forge_flux.QueryTap)
    assert s.patcher.object_patches == {} and "model_function_wrapper" not in s.patcher.model_options


def test_a_second_clone_replaces_the_first_patches_instead_of_chaining(doubles, tmp_path):
    s = Setup(tmp_path)
    first, _ = forge_flux.patched_clone(s.patcher, ForgeRun([s.unit(0, 5.0)], [(1.0, 0.0)], StepClock()))
    s.memory.load(first)  # its patches are live on the model when the next clone is made
    once, _ = s.run([s.unit(0, 1.0)])
    s.memory.load(s.patcher)
    again, _ = forge_flux.patched_clone(first, ForgeRun([s.unit(0, 1.0)], [(1.0, 0.0)], StepClock()))
    s.memory.load(again)
    with torch.no_grad():
        from tests.doubles.forge_flux_sampling import calc_cond_uncond_batch

        twice, _ = calc_cond_uncond_batch(again, s.cond, None, s.x, s.sigma, [[1, 0]])
    assert torch.equal(once, twice)


# -- start/end and masks, against the math directly ---------------------------------------------
def _manual(s: Setup, unit_terms) -> torch.Tensor:
    """The double with each double block's image output plus ``unit_terms(n, q)``, added through
    plain forward hooks (not our patches): q is caught at the QKNorm, the term computed here."""
    from tests.doubles.forge_flux_sampling import calc_cond_uncond_batch

    handles, caught = [], {}
    for n, block in enumerate(s.double.double_blocks):
        handles.append(block.img_attn.norm.register_forward_hook(lambda m, a, out, n=n: caught.__setitem__(n, out[0])))
        handles.append(block.register_forward_hook(lambda m, a, out, n=n: (out[0] + unit_terms(n, caught[n]), out[1])))
    s.memory.load(s.patcher)
    try:
        with torch.no_grad():
            return calc_cond_uncond_batch(s.patcher, s.cond, None, s.x, s.sigma, [[0]])[0]
    finally:
        for h in handles:
            h.remove()


def _attend(q, k, v, heads) -> torch.Tensor:
    b, h, n, d = q.shape
    kh = k.view(1, -1, heads, d).transpose(1, 2)
    vh = v.view(1, -1, heads, d).transpose(1, 2)
    w = torch.softmax(q @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, h * d)


def test_start_end_by_step(doubles, tmp_path):
    s = Setup(tmp_path)
    unit = s.unit(0, 0.9, start=0.3, end=0.6)
    kv = unit.kv.kv
    on = _manual(s, lambda n, q: 0.9 * _attend(q, kv[n][0][1:], kv[n][1][1:], 2))
    off = _manual(s, lambda n, q: 0.0)
    clock = StepClock()
    for progress, expected in ((0.0, off), (0.3, on), (0.5, on), (0.6, on), (0.7, off)):
        clock.report(0.6, progress)  # the denoiser's report for this step (sigma 0.6)
        got, _ = s.run([unit], clock)
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
        if expected is off:
            assert torch.equal(got, s.run(None)[0])


def test_region_mask_over_the_token_grid(doubles, tmp_path):
    s = Setup(tmp_path)
    mask = torch.zeros(30, 40)
    mask[:, :20] = 1.0  # the left half of the canvas: token columns 0-1 of the 3×4 grid
    unit = s.unit(0, 1.0, mask=RegionMask(mask))
    kv = unit.kv.kv
    grid = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3).reshape(1, 12, 1)
    expected = _manual(s, lambda n, q: grid * _attend(q, kv[n][0][1:], kv[n][1][1:], 2))
    got, _ = s.run([unit])
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)
    unmasked, _ = s.run([s.unit(0, 1.0)])
    baseline, _ = s.run(None)
    # the right half's latent pixels see the term only through attention in later blocks
    assert not torch.equal(got, unmasked) and not torch.equal(got, baseline)
