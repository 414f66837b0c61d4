"""FaceID image tokens for one unit equal diffusers', several faces and the Plus v2 shortcut included.

diffusers builds its projections with its own converter from the same original-format state dict
and takes a unit's faces as ``[batch, num_faces, 512]`` (``MultiIPAdapterImageProjection``),
attending over all of them at once; ours projects each face and concatenates the token blocks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.embeddings import MultiIPAdapterImageProjection

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.test_faceid_lora import CTX, ID, diffusers_pairs, faceid_tensors, inputs, run, tiny_diffusers_unet
from tests.test_projections import _diffusers_projection

ENC = 24  # tiny CLIP hidden width of faceid_tensors

# kind, file name, tokens per face, LoRA rank
CASES = {
    "faceid": ("faceid", "ip-adapter-faceid_sd15.bin", 4, 4),
    "plusv2": ("faceid_plus", "ip-adapter-faceid-plusv2_sd15.bin", 4, 4),
    "portrait": ("faceid", "ip-adapter-faceid-portrait_sd15.bin", 16, 0),
}


def _faces(n: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    face = torch.nn.functional.normalize(torch.randn(n, ID, generator=g), dim=-1)  # like normed_embedding
    return face, torch.randn(n, 9, ENC, generator=g)


def _diffusers_tokens(
    image_proj: dict, face: torch.Tensor, hidden: torch.Tensor | None, shortcut: float
) -> torch.Tensor:
    """One unit, one batch row: ``[1, num_faces, …]`` through diffusers' multi-adapter projection."""
    projection = _diffusers_projection(image_proj)
    if hidden is not None:
        projection.clip_embeds, projection.shortcut, projection.shortcut_scale = hidden[None], True, shortcut
    (tokens,) = MultiIPAdapterImageProjection([projection])([face[None]])
    return tokens.reshape(1, -1, CTX)  # [1, num_faces, T, ctx] → the unit's token sequence


@pytest.mark.parametrize(("case", "faces"), [("faceid", 1), ("faceid", 2), ("plusv2", 2), ("portrait", 3)])
@torch.no_grad()
def test_unit_tokens_equal_diffusers(case, faces):
    kind, filename, tokens_per_face, rank = CASES[case]
    tensors = faceid_tensors(tiny_diffusers_unet(), kind, rank=rank, tokens=tokens_per_face)
    model = IPAdapterModel.from_tensors(tensors, filename)
    face, hidden = _faces(faces)
    hidden = hidden if kind == "faceid_plus" else None
    shortcut = 1.7  # ≠ 1, so a Plus v2 shortcut scale that was ignored would show
    enc = EncodedImages(face=face, hidden=hidden)
    cond, uncond = model.cond_uncond_tokens(enc, None if hidden is None else _FixedUncond(hidden), shortcut)
    assert cond.shape == (1, faces * tokens_per_face, CTX)
    torch.testing.assert_close(cond, _diffusers_tokens(tensors.image_proj, face, hidden, shortcut), atol=1e-5, rtol=0)
    uncond_hidden = None if hidden is None else _FixedUncond(hidden).uncond_hidden().expand_as(hidden)
    expected_uncond = _diffusers_tokens(tensors.image_proj, torch.zeros_like(face), uncond_hidden, shortcut)
    torch.testing.assert_close(uncond, expected_uncond, atol=1e-5, rtol=0)


class _FixedUncond:
    """Stands in for the CLIP encoder's uncond hidden states (a fixed tensor here)."""

    def __init__(self, like: torch.Tensor) -> None:
        self.value = torch.full((1, *like.shape[1:]), 0.25)

    def uncond_hidden(self) -> torch.Tensor:
        return self.value


@torch.no_grad()
def test_plusv2_shortcut_scale_is_a_per_call_parameter():
    kind, filename, tokens, rank = CASES["plusv2"]
    tensors = faceid_tensors(tiny_diffusers_unet(), kind, rank=rank, tokens=tokens)
    model = IPAdapterModel.from_tensors(tensors, filename)
    face, hidden = _faces(1)
    enc = EncodedImages(face=face, hidden=hidden)
    a, b, c = (model.project(enc, s) for s in (0.5, 1.0, 1.5))
    torch.testing.assert_close(b - a, c - b, atol=1e-5, rtol=0)  # linear in the scale: x + s·perceiver(x)
    assert not torch.allclose(a, c)


@torch.no_grad()
def test_portrait_three_faces_unet_call_equals_diffusers():
    """The 48 concatenated tokens through our attn2 hooks equal diffusers' IP processors given the
    three faces as one ``[1, 3, 512]`` input, on the whole (tiny) UNet."""
    unet = tiny_diffusers_unet()
    kind, filename, tokens, rank = CASES["portrait"]
    tensors = faceid_tensors(unet, kind, rank=rank, tokens=tokens)
    model = IPAdapterModel.from_tensors(tensors, filename)
    assert model.lora is None
    face, _ = _faces(3)
    reference = copy.deepcopy(unet)
    reference._load_ip_adapter_weights([{"image_proj": tensors.image_proj, "ip_adapter": tensors.ip_adapter}], False)
    x, t, ctx = inputs(batch=1)
    expected = run(reference, x, t, ctx, added_cond_kwargs={"image_embeds": [face[None]]})
    cond, _ = model.cond_uncond_tokens(EncodedImages(face=face), None)
    kv = model.layer_kv(cond)
    with Attn2Hooks([a2 for _, a2 in diffusers_pairs(unet)], lambda n, _q, _c: [ImageKV(*kv[n], 1.0)]):
        got = run(unet, x, t, ctx)
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= 1e-5, err
    one_face = model.layer_kv(model.cond_uncond_tokens(EncodedImages(face=face[:1]), None)[0])
    with Attn2Hooks([a2 for _, a2 in diffusers_pairs(unet)], lambda n, _q, _c: [ImageKV(*one_face[n], 1.0)]):
        assert not torch.allclose(run(unet, x, t, ctx), expected, atol=1e-4, rtol=1e-3)
