"""Projections load the original key names and equal diffusers' modules on the same weights.

diffusers converts the original-format state dict with its own loader
(``_convert_ip_adapter_image_proj_to_diffusers``); equality therefore checks our key layout,
our module structure and our forward passes against an independent implementation.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.unet import UNet2DConditionLoadersMixin

from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.detect import ProjectionKind
from ipadapter_ext.core.load.formats import load_adapter_tensors, save_adapter_tensors
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import SD15_WIDTHS, SDXL_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths

CTX = 32
ENC = 48  # tiny CLIP hidden width
EMB = 40  # tiny image_embeds width
ID = 16  # tiny face embedding width
W15 = tiny_widths(SD15_WIDTHS)

# name → (shapes, file name, expected kind)
TINY = {
    "base": (adapter_shapes("base", CTX, W15, EMB), "ip-adapter_sd15.safetensors", ProjectionKind.IMAGE),
    "plus": (
        adapter_shapes("resampler", CTX, W15, ENC, tokens=16, inner=64),
        "ip-adapter-plus_sd15.bin",
        ProjectionKind.RESAMPLER,
    ),
    "plus_wide": (
        adapter_shapes("resampler", CTX, W15, ENC, tokens=16, res_dim=48, inner=128),
        "plus-sdxl-like.bin",
        ProjectionKind.RESAMPLER,
    ),
    "full": (adapter_shapes("full", CTX, W15, ENC), "full-face.bin", ProjectionKind.FULL),
    "faceid": (
        adapter_shapes("faceid", CTX, W15, 0, id_dim=ID, lora_rank=4),
        "ip-adapter-faceid_sd15.bin",
        ProjectionKind.FACEID,
    ),
    "portrait": (
        adapter_shapes("faceid", CTX, W15, 0, id_dim=ID, tokens=16),
        "ip-adapter-faceid-portrait.bin",
        ProjectionKind.PORTRAIT,
    ),
    "faceid_plus": (
        adapter_shapes("faceid_plus", CTX, W15, ENC, id_dim=ID, lora_rank=4, inner=64),
        "ip-adapter-faceid-plus_sd15.bin",
        ProjectionKind.FACEID_PLUS,
    ),
    "faceid_plusv2": (
        adapter_shapes("faceid_plus", CTX, W15, ENC, id_dim=ID, lora_rank=4, inner=64),
        "ip-adapter-faceid-plusv2_sd15.bin",
        ProjectionKind.FACEID_PLUS,
    ),
    "portrait_unnorm": (
        adapter_shapes("resampler", CTX, W15, ID, tokens=16, res_dim=48, inner=64),
        "ip-adapter-faceid-portrait_sdxl_unnorm.bin",
        ProjectionKind.RESAMPLER,
    ),
    "sdxl_base": (
        adapter_shapes("base", CTX, tiny_widths(SDXL_WIDTHS), EMB),
        "ip-adapter_sdxl.safetensors",
        ProjectionKind.IMAGE,
    ),
}


def _inputs(n: int = 3, seed: int = 1) -> EncodedImages:
    g = torch.Generator().manual_seed(seed)
    return EncodedImages(
        image_embeds=torch.randn(n, EMB, generator=g),
        hidden=torch.randn(n, 9, ENC, generator=g),
        face=torch.randn(n, ID, generator=g),
    )


def _diffusers_projection(image_proj: dict[str, torch.Tensor]):
    module = UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, dict(image_proj), low_cpu_mem_usage=False
    )
    return module.eval()


def _diffusers_forward(name: str, module, enc: EncodedImages, scale: float) -> torch.Tensor:
    if name.startswith("faceid_plus"):
        module.clip_embeds = enc.hidden[:, None]  # [B, n_images, S, H]
        module.shortcut = name.endswith("v2")
        module.shortcut_scale = scale
        return module(enc.face)
    if name in ("faceid", "portrait"):
        return module(enc.face)
    if name in ("plus", "plus_wide", "full"):
        return module(enc.hidden)
    return module(enc.image_embeds)


@pytest.mark.parametrize("name", [n for n in TINY if n not in ("sdxl_base", "portrait_unnorm")])
@torch.no_grad()
def test_projection_equals_diffusers(name):
    shapes, filename, _ = TINY[name]
    tensors = adapter_tensors(shapes, seed=3)
    ours = IPAdapterModel.from_tensors(tensors, filename)
    theirs = _diffusers_projection(tensors.image_proj)
    enc = _inputs()
    scale = 0.7
    expected = _diffusers_forward(name, theirs, enc, scale)
    got = ours.project(enc, shortcut_scale=scale)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_save_detect_load_round_trip(tmp_path, name, suffix):
    shapes, filename, kind = TINY[name]
    tensors = adapter_tensors(shapes, seed=5)
    path = tmp_path / (filename.rsplit(".", 1)[0] + suffix)
    save_adapter_tensors(tensors, path)
    model = IPAdapterModel.from_file(path)
    assert model.info.kind is kind
    assert model.info.context_dim == CTX
    for n, (wk, wv) in enumerate(zip(model.to_k, model.to_v, strict=True)):
        assert torch.equal(wk, tensors.ip_adapter[f"{2 * n + 1}.to_k_ip.weight"])
        assert torch.equal(wv, tensors.ip_adapter[f"{2 * n + 1}.to_v_ip.weight"])
    reloaded = load_adapter_tensors(path)
    for key, value in tensors.image_proj.items():
        assert torch.equal(reloaded.image_proj[key], value)
    tokens = model.project(_inputs(2))
    assert tokens.shape[0] == 2 and tokens.shape[-1] == CTX
    if model.info.tokens is not None:
        assert tokens.shape[1] == model.info.tokens


def test_faceid_plus_v2_shortcut_changes_output_only_for_v2():
    shapes, _, _ = TINY["faceid_plus"]
    tensors = adapter_tensors(shapes, seed=2)
    v1 = IPAdapterModel.from_tensors(tensors, "faceid-plus.bin")
    v2 = IPAdapterModel.from_tensors(tensors, "faceid-plusv2.bin")
    enc = _inputs(1)
    assert torch.equal(v1.project(enc, 0.5), v1.project(enc, 2.0))
    assert not torch.allclose(v2.project(enc, 0.5), v2.project(enc, 2.0))
    face_tokens = v2.projection.face_tokens(enc.face)
    torch.testing.assert_close(v2.project(enc, 0.0), face_tokens)


def test_uncond_inputs_follow_the_original_recipes():
    class FakeEncoder:
        def uncond_hidden(self):
            return torch.full((1, 9, ENC), 0.5)

    enc = _inputs(2)
    un = IPAdapterModel.uncond_inputs(enc, FakeEncoder())
    assert torch.equal(un.image_embeds, torch.zeros(2, EMB))
    assert torch.equal(un.face, torch.zeros(2, ID))
    assert torch.equal(un.hidden, torch.full((2, 9, ENC), 0.5))
    only_embeds = IPAdapterModel.uncond_inputs(EncodedImages(image_embeds=enc.image_embeds), None)
    assert only_embeds.hidden is None and only_embeds.face is None


def test_portrait_unnorm_reads_the_face_embedding():
    shapes, filename, _ = TINY["portrait_unnorm"]
    model = IPAdapterModel.from_tensors(adapter_tensors(shapes), filename)
    assert model.info.variant == "portrait-unnorm"
    faces = torch.randn(2, ID)
    out = model.project(EncodedImages(face=faces))
    assert out.shape == (2, 16, CTX)
    assert not torch.equal(out, model.project(EncodedImages(face=faces.flip(0))))
