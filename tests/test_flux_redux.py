"""Flux Redux: detection, its tokens against diffusers' ``ReduxImageEncoder``, and the whole Flux
transformer with the tokens appended (our unet wrapper on the double of Forge's Flux) against
diffusers' ``FluxTransformer2DModel`` fed the same concatenated context.

Strength as an attention bias and region masks are checked against diffusers given the additive
mask built here, independently, as ComfyUI's ``StyleModelApply`` builds it (``attn_bias``: log of
the strength on the Redux columns of every row but the Redux tokens' own) and as the README
defines the region (the Redux columns reach only the image rows inside the mask, weighted by the
mask, and the tokens' own rows).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ipadapter_ext.core.attend.context import ContextUnit, StrengthMode, context_bias, downsample_tokens
from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.errors import IncompatibleModelError, IPAdapterError, ModelFileError
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.compat import UNetSignature, check_unet
from ipadapter_ext.core.load.detect import detect_adapter
from ipadapter_ext.core.load.registry import ModelRegistry
from ipadapter_ext.core.project.projections import EncodedImages
from ipadapter_ext.host.forge.attn2_patch import StepClock
from tests.flux_env import DOUBLE, HIDDEN, SIGLIP_WIDTH, TXT, redux_tensors, save_redux
from tests.test_flux import ATOL, FORGE_DOUBLES, RTOL, Setup

GRID = 4  # the tiny SigLIP's 4×4 patches


@pytest.fixture
def doubles(monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)


def _shapes(flat):
    return {k: tuple(v.shape) for k, v in flat.items()}


def test_detected_from_its_shapes_as_published(tmp_path):
    info = detect_adapter(_shapes(redux_tensors(embed=1152, txt=4096)), "flux1-redux-dev.safetensors")
    assert (info.variant, info.arch, info.context_dim, info.num_layers) == ("flux-redux", "flux", 4096, 0)
    assert info.describe() == "Flux Redux · one context token per SigLIP patch · needs SigLIP so400m"
    save_redux(tmp_path / "style_models" / "flux1-redux-dev.safetensors")
    entry = ModelRegistry([tmp_path / "style_models"], []).adapter("flux1-redux-dev")
    assert entry.info is not None and entry.info.variant == "flux-redux"


def test_damaged_file_and_checks():
    flat = redux_tensors()
    flat["redux_down.weight"] = torch.ones(TXT, 5)
    with pytest.raises(ModelFileError, match="do not chain"):
        detect_adapter(_shapes(flat), "broken.safetensors")
    info = detect_adapter(_shapes(redux_tensors()), "redux")
    check_unet(info, UNetSignature(TXT, (HIDDEN,) * DOUBLE, "Flux", arch="flux", single_blocks=2, head_dim=16))
    with pytest.raises(
        IncompatibleModelError, match=r"'redux' is a Flux IP-Adapter \(Flux Redux\); the loaded checkpoint is SDXL"
    ):
        check_unet(info, UNetSignature(2048, (640,) * 70, "SDXL"), "'redux'")
    with pytest.raises(IncompatibleModelError, match="64-wide image tokens; the loaded Flux's text tokens are 24"):
        check_unet(
            detect_adapter(_shapes(redux_tensors(txt=64)), "r"), UNetSignature(TXT, (HIDDEN,) * 2, "Flux", arch="flux")
        )


def test_tokens_equal_diffusers_redux_image_encoder(tmp_path):
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

    path = save_redux(tmp_path / "redux.safetensors", seed=3)
    adapter = IPAdapterModel.from_file(path)
    oracle = ReduxImageEncoder(redux_dim=SIGLIP_WIDTH, txt_in_features=TXT).eval()
    oracle.load_state_dict(redux_tensors(seed=3), strict=True)
    hidden = torch.randn(2, GRID * GRID, SIGLIP_WIDTH)
    with torch.no_grad():
        ref = oracle(hidden).image_embeds
    torch.testing.assert_close(adapter.project(EncodedImages(last_hidden=hidden)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["area", "bicubic", "bilinear", "nearest-exact"])
def test_downsampling_resizes_the_token_grid(mode):
    tokens = torch.randn(2, 27 * 27, 8)
    for factor, side in ((1, 27), (2, 13), (3, 9), (9, 3)):
        out = downsample_tokens(tokens, factor, mode)
        assert out.shape == (2, side * side, 8)
    grid = tokens.view(2, 27, 27, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(9, 9), mode=mode).permute(0, 2, 3, 1).reshape(2, 81, 8)
    torch.testing.assert_close(downsample_tokens(tokens, 3, mode), ref)


class ReduxSetup(Setup):
    def __init__(self, tmp_path, batch: int = 1, seed: int = 3):
        super().__init__(tmp_path, n_adapters=0, batch=batch)
        self.adapter = IPAdapterModel.from_file(save_redux(tmp_path / "redux.safetensors", seed=seed))
        g = torch.Generator().manual_seed(seed)
        self.hidden = torch.randn(2, GRID * GRID, SIGLIP_WIDTH, generator=g)

    def tokens(self, images: int = 1, factor: int = 1, mode: str = "area") -> torch.Tensor:
        tokens = self.adapter.project(EncodedImages(last_hidden=self.hidden[:images]))
        return downsample_tokens(tokens, factor, mode).reshape(1, -1, TXT)

    def unit(
        self, strength: float = 1.0, mode=StrengthMode.SCALE, images: int = 1, factor: int = 1, **kw
    ) -> ContextUnit:
        tokens = self.tokens(images, factor)
        if mode is StrengthMode.SCALE:
            tokens = tokens * strength
        return ContextUnit(7, tokens, strength, mode, **kw)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_appended_tokens_equal_diffusers_with_the_longer_context(doubles, tmp_path, strength):
    s = ReduxSetup(tmp_path)
    cond, _ = s.run(None, context=[s.unit(strength)])
    torch.testing.assert_close(cond, s.oracle(None, extra=strength * s.tokens()), rtol=RTOL, atol=ATOL)
    baseline, _ = s.run(None)
    assert (cond - baseline).abs().max() > 1e-3
    again, _ = s.run(None, context=[s.unit(strength)])
    assert torch.equal(again, cond)
    # breaking the term slightly is caught: one token fewer, or no SiLU between the two Linears
    # (where the tokens go in the context does not matter: Flux's text positions are all zero)
    assert (cond - s.oracle(None, extra=strength * s.tokens()[:, :-1])).abs().max() > 10 * ATOL
    flat = redux_tensors(seed=3)
    no_silu = (s.hidden[:1] @ flat["redux_up.weight"].T + flat["redux_up.bias"]) @ flat["redux_down.weight"].T + flat[
        "redux_down.bias"
    ]
    assert (cond - s.oracle(None, extra=strength * no_silu)).abs().max() > 10 * ATOL


def test_the_token_module_is_handed_to_forge_with_the_pass_and_released_with_it(doubles, tmp_path):
    """Redux's tokens reach Forge's memory management as a module of the clone, like the K/V: the
    pass's run lists it (to take it off the host's loaded models when the pass ends) and empties it
    when the generation is over (the clone Forge keeps until the next one holds it)."""
    from ipadapter_ext.host.forge import flux as forge_flux
    from ipadapter_ext.host.forge.attn2_patch import ForgeRun
    from ipadapter_ext.host.forge.flux_context import ContextUnits, attention_namespace

    s = ReduxSetup(tmp_path)
    clock, units = StepClock(), [s.unit()]
    run = ForgeRun([], [], clock)
    redux = ContextUnits(units, ForgeRun(units, [(1.0, 0.0)], clock), attention_namespace(s.double))  # type: ignore[arg-type]
    clone, _ = forge_flux.patched_clone(s.patcher, run, redux)
    handed = [patcher.model for patcher in clone.extra_model_patchers_during_sampling]
    assert len(handed) == 1 and run.handed == handed and list(handed[0].buffers())
    run.release()
    assert not list(handed[0].buffers()) and run.handed == []


def test_strength_zero_and_outside_start_end_are_no_unit(doubles, tmp_path):
    s = ReduxSetup(tmp_path)
    baseline, _ = s.run(None)
    assert torch.equal(s.run(None, context=[s.unit(0.0)])[0], baseline)
    assert torch.equal(s.run(None, context=[s.unit(0.0, StrengthMode.ATTENTION_BIAS)])[0], baseline)
    clock = StepClock()
    clock.report(0.6, 0.2)  # this step is at 20 %
    late = s.unit(1.0, start=0.5)
    assert torch.equal(s.run(None, clock=clock, context=[late])[0], baseline)
    clock.report(0.6, 0.7)
    assert not torch.equal(s.run(None, clock=clock, context=[late])[0], baseline)


def _comfy_bias(text: int, redux: int, image: int, strength: float) -> torch.Tensor:
    """ComfyUI's StyleModelApply 'attn_bias' mask for one Redux conditioning."""
    total = text + redux + image
    mask = torch.zeros(total, total)
    mask[:text, text : text + redux] = math.log(strength)
    mask[text + redux :, text : text + redux] = math.log(strength)
    return mask[None, None]


@pytest.mark.parametrize("strength", [0.3, 2.0])
def test_attention_bias_mode_equals_diffusers_with_comfyui_mask(doubles, tmp_path, strength):
    s = ReduxSetup(tmp_path)
    cond, _ = s.run(None, context=[s.unit(strength, StrengthMode.ATTENTION_BIAS)])
    text, image = s.cond.context.shape[1], 12
    mask = _comfy_bias(text, GRID * GRID, image, strength)
    torch.testing.assert_close(cond, s.oracle(None, extra=s.tokens(), mask=mask), rtol=RTOL, atol=ATOL)
    plain, _ = s.run(None, context=[s.unit(1.0)])
    assert (cond - plain).abs().max() > 1e-3
    # the bias went only where the run was biased: the module's attention function is back
    import backend.nn.flux as flux_module
    from backend.attention import attention_function

    assert flux_module.attention_function is attention_function


def test_region_mask_reaches_only_the_masked_image_tokens(doubles, tmp_path):
    s = ReduxSetup(tmp_path)
    canvas = torch.zeros(30, 40)
    canvas[:, :20] = 1.0  # the left half: token columns 0-1 of the 3×4 grid
    cond, _ = s.run(None, context=[s.unit(1.0, mask=RegionMask(canvas))])
    text, redux, image = s.cond.context.shape[1], GRID * GRID, 12
    total = text + redux + image
    mask = torch.zeros(total, total)
    inside = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3).reshape(-1)
    mask[:text, text : text + redux] = -math.inf
    mask[text + redux :, text : text + redux] = torch.log(inside)[:, None]
    torch.testing.assert_close(cond, s.oracle(None, extra=s.tokens(), mask=mask[None, None]), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        context_bias([s.unit(1.0, mask=RegionMask(canvas))], text, image, (6, 8)), mask[None, None]
    )  # fmt: skip
    whole, _ = s.run(None, context=[s.unit(1.0)])
    assert not torch.equal(cond, whole)


@pytest.mark.parametrize("factor", [2, 3])
def test_downsampled_and_several_images(doubles, tmp_path, factor):
    s = ReduxSetup(tmp_path)
    unit = s.unit(1.0, images=2, factor=factor)
    assert unit.num_tokens == 2 * (GRID // factor) ** 2
    cond, _ = s.run(None, context=[unit])
    torch.testing.assert_close(cond, s.oracle(None, extra=s.tokens(2, factor)), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batching", [((1, 0),), ((1,), (0,))])
def test_true_cfg_uncond_rows_keep_their_context(doubles, tmp_path, batching):
    s = ReduxSetup(tmp_path, batch=2)
    cond, uncond = s.run(None, uncond=True, batching=batching, context=[s.unit(0.8)])
    torch.testing.assert_close(cond, s.oracle(None, extra=0.8 * s.tokens()), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(uncond, s.oracle(None, "uncond"), rtol=RTOL, atol=ATOL)


def test_two_redux_units_with_ip_adapter_units(doubles, tmp_path):
    """Redux beside an XLabs unit in one generation: the XLabs term on the blocks, the Redux
    tokens (two units, one after the other) in the context, as diffusers computes them together."""
    from tests.flux_env import EMBED, load_into_diffusers, save_xlabs

    s = ReduxSetup(tmp_path)
    s.paths = [save_xlabs(tmp_path / "x.safetensors", seed=10)]
    s.adapters = [IPAdapterModel.from_file(p) for p in s.paths]
    g = torch.Generator().manual_seed(5)
    s.embeds, s.black = [torch.randn(1, EMBED, generator=g)], [torch.randn(1, EMBED, generator=g)]
    load_into_diffusers(s.reference, s.paths, [0.9])
    first, second = s.unit(1.0), s.unit(0.5)
    cond, _ = s.run([Setup.unit(s, 0, 0.9)], context=[first, second])  # the XLabs unit, as test_flux builds it
    extra = torch.cat((s.tokens(), 0.5 * s.tokens()), dim=1)
    torch.testing.assert_close(cond, s.oracle(s.embeds, extra=extra), rtol=RTOL, atol=ATOL)


def test_redux_fields_in_infotext_paste_and_payload():
    """The Redux fields go through the one schema: written to the infotext when not the default,
    read back by a paste (the host's ``context_tokens`` note is for the reader only), defaulted
    when absent, and refused in words by the API when out of range."""
    from ipadapter_ext.api.payload import validate_unit
    from ipadapter_ext.schema import IPAdapterUnit
    from ipadapter_ext.ui.infotext import parse_unit_infotext, paste_value, unit_infotext

    unit = IPAdapterUnit(
        model="flux1-redux-dev", encoder="auto", weight=0.4, redux_strength_mode="attention bias",
        redux_downsample=3, redux_downsample_mode="bicubic",
    )  # fmt: skip
    text = unit_infotext(unit, None, 2) + ", context_tokens: 81"
    fields = parse_unit_infotext(text)
    assert {k: fields[k] for k in ("redux_strength_mode", "redux_downsample", "redux_downsample_mode")} == {
        "redux_strength_mode": "attention bias",
        "redux_downsample": 3,
        "redux_downsample_mode": "bicubic",
    }
    assert "context_tokens" not in fields and fields["weight"] == 0.4 and fields["images"] == 2
    plain = parse_unit_infotext(unit_infotext(IPAdapterUnit(model="flux1-redux-dev"), None, 1))
    assert not any(k.startswith("redux") for k in plain)  # defaults are not written
    assert [paste_value(plain, n) for n in ("redux_strength_mode", "redux_downsample", "redux_downsample_mode")] == [
        "scale",
        1,
        "area",
    ]
    req = validate_unit({"image": _png(), "model": "m", **{k: fields[k] for k in fields if k.startswith("redux")}}, 2)
    assert req.to_request(2).redux_downsample == 3
    for bad, field in (({"redux_downsample": 10}, "redux_downsample"), ({"redux_strength_mode": "max"}, "redux_strength_mode"),
                       ({"redux_downsample_mode": "lanczos"}, "redux_downsample_mode")):  # fmt: skip
        with pytest.raises(IPAdapterError, match=f"IP-Adapter unit 2.*{field}"):
            validate_unit({"image": _png(), "model": "m", **bad}, 2).to_request(2)


def _png() -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_the_hosts_style_models_folder_is_searched_when_it_exists(tmp_path, monkeypatch):
    """A Redux file in ``models/style_models`` (where ComfyUI-style installs keep it) is a unit
    model; without that folder nothing is created or searched there."""
    import modules.paths_internal as paths_internal

    from ipadapter_ext.host import models as host_models

    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "models"))
    host_models._EngineHolder.reset()
    try:
        (tmp_path / "models").mkdir()
        registry = host_models.engine().registry
        assert tmp_path / "models" / "style_models" not in registry.adapter_dirs
        assert not (tmp_path / "models" / "style_models").exists()
        host_models._EngineHolder.reset()
        save_redux(tmp_path / "models" / "style_models" / "flux1-redux-dev.safetensors")
        entry = host_models.engine().registry.adapter("flux1-redux-dev")
        assert entry.info is not None and entry.info.variant == "flux-redux"
    finally:
        host_models._EngineHolder.reset()
