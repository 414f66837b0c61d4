"""Masks, combine modes and the precise-style swap, on the math alone (no WebUI).

Pipeline checks (through the WebUI's ldm UNet) are in tests/test_unit_controls.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ldm.modules.diffusionmodules.openaimodel import Downsample
from PIL import Image

from ipadapter_ext.core.attend.attention import ImageKV, add_image_attention
from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.attend.masks import RegionMask, mask_tensor, token_grid
from ipadapter_ext.core.encode.combine import CombineMode, combine_encoded
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.project.projections import EncodedImages
from ipadapter_ext.unit_inputs import decode_mask


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (65, 97), (13, 7), (75, 41), (1, 9), (128, 128)])
def test_token_grid_follows_the_unets_own_downsampling(hw):
    """ldm's stride-2 convolution, applied level by level, gives the grid token_grid computes."""
    conv = Downsample(1, use_conv=True, dims=2, padding=1)
    x = torch.zeros(1, 1, *hw)
    for _ in range(4):
        assert token_grid(x.shape[-2] * x.shape[-1], hw) == tuple(x.shape[-2:])
        x = conv(x)


def test_masked_term_is_exactly_zero_outside_the_mask_at_every_level():
    torch.manual_seed(0)
    mask = torch.zeros(90, 150)  # 3:5, like a 48×80 latent
    mask[:, 70:] = 1.0
    mask[10:20, 5:9] = 0.5
    region = RegionMask(mask)
    hw = (48, 80)
    for level in range(4):
        rows, cols = math.ceil(hw[0] / 2**level), math.ceil(hw[1] / 2**level)
        n, heads, inner = rows * cols, 4, 32
        q, z = torch.randn(2, n, inner), torch.randn(2, n, inner)
        term = ImageKV(
            torch.randn(1, 5, inner), torch.randn(1, 5, inner), 0.9, mask=region.for_layer(n, hw, q.device, q.dtype)
        )
        out = add_image_attention(z, q, heads, [term])
        grid = region.grid(rows, cols).reshape(-1)
        outside, inside = grid == 0, grid > 0
        assert outside.any() and inside.any()
        assert torch.equal(out[:, outside], z[:, outside]), level  # the term times an exact 0
        assert (out[:, inside] != z[:, inside]).any(dim=-1).all(), level
        unmasked = add_image_attention(z, q, heads, [ImageKV(term.k, term.v, 0.9)])
        torch.testing.assert_close(out - z, (unmasked - z) * grid.view(1, -1, 1), atol=1e-6, rtol=1e-5)


def test_complementary_masks_compose_one_scene():
    torch.manual_seed(1)
    left = torch.zeros(16, 24)
    left[:, :12] = 1
    a, b = RegionMask(left), RegionMask(1 - left)
    n, hw = 16 * 24, (16, 24)
    q, z = torch.randn(1, n, 16), torch.randn(1, n, 16)
    ka, kb = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    both = add_image_attention(z, q, 2, [ImageKV(ka, ka, 1.0, mask=a.for_layer(n, hw, q.device, q.dtype)),
                                         ImageKV(kb, kb, 1.0, mask=b.for_layer(n, hw, q.device, q.dtype))])  # fmt: skip
    only_a = add_image_attention(z, q, 2, [ImageKV(ka, ka, 1.0)])
    only_b = add_image_attention(z, q, 2, [ImageKV(kb, kb, 1.0)])
    in_left = left.reshape(-1) == 1
    torch.testing.assert_close(both[:, in_left], only_a[:, in_left])
    torch.testing.assert_close(both[:, ~in_left], only_b[:, ~in_left])


def test_mask_forms_agree():
    """A PNG upload, a painted gradio 3 sketch, a gradio 4 editor layer and an alpha mask all
    give the same mask."""
    arr = np.zeros((20, 30), np.uint8)
    arr[5:15, 10:25] = 255
    plain = mask_tensor(Image.fromarray(arr))
    assert plain.shape == (20, 30) and plain.max() == 1 and plain.sum() == 150
    sketch = {"image": Image.new("RGB", (30, 20), "gray"), "mask": Image.fromarray(arr).convert("RGB")}
    assert torch.equal(decode_mask(sketch, "m"), plain)
    unpainted = {"image": Image.fromarray(arr).convert("RGB"), "mask": Image.new("RGB", (30, 20))}
    assert torch.equal(decode_mask(unpainted, "m"), plain)  # the uploaded picture is the mask
    layer = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (10, 5, 25, 15))
    editor = {"background": Image.new("RGB", (30, 20)), "layers": [layer], "composite": None}
    assert torch.equal(decode_mask(editor, "m"), plain)
    assert torch.equal(mask_tensor(layer), plain)  # transparent outside: alpha is the mask
    with pytest.raises(IPAdapterError, match="m: expected a 2-D mask"):
        mask_tensor(np.zeros((2, 3, 4, 5)), "m")


def _encoded(n: int, seed: int = 0) -> EncodedImages:
    g = torch.Generator().manual_seed(seed)
    return EncodedImages(image_embeds=torch.randn(n, 8, generator=g), hidden=torch.randn(n, 5, 6, generator=g))


@pytest.mark.parametrize("mode", list(CombineMode))
def test_combine_modes_match_their_formulas(mode):
    enc, weights = _encoded(3), [1.0, 0.5, -2.0]
    got = combine_encoded(enc, mode, weights)
    for name in ("image_embeds", "hidden"):
        e = getattr(enc, name) * torch.tensor(weights).view(-1, *([1] * (getattr(enc, name).ndim - 1)))
        expected = {
            CombineMode.CONCAT: e,
            CombineMode.ADD: e[0] + e[1] + e[2],
            CombineMode.AVERAGE: (e[0] + e[1] + e[2]) / 3,
            CombineMode.SUBTRACT: e[0] - (e[1] + e[2]) / 2,
            CombineMode.NORM_AVERAGE: sum(e[i] / torch.sqrt(e[0] ** 2 + e[1] ** 2 + e[2] ** 2) for i in range(3)) / 3,
        }[mode]
        torch.testing.assert_close(getattr(got, name), expected.reshape(getattr(got, name).shape), atol=1e-6, rtol=1e-5)
    assert got.face is None


def test_one_image_is_kept_as_is_and_weights_must_match_the_images():
    enc = _encoded(1)
    for mode in CombineMode:
        assert torch.equal(combine_encoded(enc, mode).hidden, enc.hidden)
    with pytest.raises(IPAdapterError, match="image_weights has 2 numbers for 3 reference image"):
        combine_encoded(_encoded(3), "average", [1.0, 1.0])


class _Adapter:
    """Just the K/V product of IPAdapterModel.layer_kv, for UnitKV."""

    def __init__(self, layers: int, width: int = 8) -> None:
        g = torch.Generator().manual_seed(3)
        self.w = [(torch.randn(width, 6, generator=g), torch.randn(width, 6, generator=g)) for _ in range(layers)]

    def layer_kv(self, tokens, device, dtype, head_dim=0):
        return [(tokens @ wk.T, tokens @ wv.T) for wk, wv in self.w]


def test_precise_swap_gives_uncond_rows_the_reference_and_cond_rows_nothing():
    cond, uncond = torch.randn(1, 4, 6), torch.randn(1, 4, 6)
    kv = UnitKV(_Adapter(3), cond, uncond, "cpu", torch.float32, swapped=(False, True, False))
    (k_plain, _), (k_swap, v_swap) = kv.rows(0, (True, False)), kv.rows(1, (True, False))
    # UnitKV projects both token sets in one batched product, the reference here one row at a
    # time: the same math through different BLAS calls, so equal to rounding, not bit for bit.
    close = dict(rtol=1e-5, atol=1e-5)  # K entries are a few units; a wrong row is off by ~1
    torch.testing.assert_close(k_plain[0], cond[0] @ _Adapter(3).w[0][0].T, **close)
    torch.testing.assert_close(k_plain[1], uncond[0] @ _Adapter(3).w[0][0].T, **close)
    torch.testing.assert_close(k_swap[1], cond[0] @ _Adapter(3).w[1][0].T, **close)  # uncond row: the reference
    assert not k_swap[0].any() and not v_swap[0].any()  # cond row: zero tokens give zero K and V
    q, z = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    out = add_image_attention(z, q, 2, [ImageKV(k_swap, v_swap, 1.0)])
    # Exact: the cond row attends over V = 0, so its term is exactly 0 and z comes back unchanged.
    assert torch.equal(out[0], z[0]) and not torch.allclose(out[1], z[1])


def test_one_negative_image_stands_against_several_concatenated_references():
    """Attention over k copies of a token set equals attention over one copy."""
    adapter = _Adapter(1)
    cond, neg = torch.randn(1, 8, 6), torch.randn(1, 4, 6)
    kv = UnitKV(adapter, cond, neg, "cpu", torch.float32)
    k, v = kv.rows(0, (False,))
    q, z = torch.randn(1, 10, 8), torch.zeros(1, 10, 8)
    single = UnitKV(adapter, neg, neg, "cpu", torch.float32).rows(0, (False,))
    torch.testing.assert_close(
        add_image_attention(z, q, 2, [ImageKV(k, v, 1.0)]), add_image_attention(z, q, 2, [ImageKV(*single, 1.0)])
    )
