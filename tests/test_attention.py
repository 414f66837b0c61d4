"""The image term equals diffusers' IPAdapterAttnProcessor2_0, and the weight modes their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0

from ipadapter_ext.core.attend.attention import SCALERS, ImageKV, WeightMode, add_image_attention
from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths

CTX, HEADS = 32, 2


def _attn(width: int, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(
        query_dim=width, cross_attention_dim=CTX, heads=HEADS, dim_head=width // HEADS, out_bias=True
    ).eval()


def _hooked(attn: Attention, x: torch.Tensor, text: torch.Tensor, terms: list[ImageKV]) -> torch.Tensor:
    """What the host wrapper does: host attention for the text part, image term added before to_out."""
    q = attn.to_q(x)
    b, n, inner = q.shape

    def heads(t):
        return t.view(b, -1, HEADS, inner // HEADS).transpose(1, 2)

    z = F.scaled_dot_product_attention(heads(q), heads(attn.to_k(text)), heads(attn.to_v(text)))
    z = z.transpose(1, 2).reshape(b, n, inner)
    z = add_image_attention(z, q, HEADS, terms)
    return attn.to_out[1](attn.to_out[0](z))


@torch.no_grad()
@pytest.mark.parametrize("scales", [[1.0], [0.6, -0.4], [0.0, 0.8]])
def test_equals_diffusers_processor(scales):
    width = 64
    attn = _attn(width)
    tokens = [4, 16][: len(scales)]
    proc = IPAdapterAttnProcessor2_0(hidden_size=width, cross_attention_dim=CTX, num_tokens=tokens, scale=scales)
    torch.manual_seed(1)
    for lin in (*proc.to_k_ip, *proc.to_v_ip):
        lin.weight.normal_(0, CTX**-0.5)
    attn.set_processor(proc)
    x = torch.randn(3, 50, width)
    text = torch.randn(3, 7, CTX)
    ip = [torch.randn(3, t, CTX) for t in tokens]
    expected = attn(x, encoder_hidden_states=(text, [i[:, None] for i in ip]))
    terms = [
        ImageKV(F.linear(i, kl.weight), F.linear(i, vl.weight), s)
        for i, kl, vl, s in zip(ip, proc.to_k_ip, proc.to_v_ip, scales, strict=True)
    ]
    got = _hooked(attn, x, text, terms)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_scale_zero_is_exactly_plain_attention():
    attn = _attn(64)
    x, text = torch.randn(2, 30, 64), torch.randn(2, 7, CTX)
    terms = [ImageKV(torch.randn(2, 4, 64), torch.randn(2, 4, 64), 0.0)]
    z = torch.randn(2, 30, 64)
    assert add_image_attention(z, attn.to_q(x), HEADS, terms) is z
    attn.set_processor(AttnProcessor2_0())
    # Exact: AttnProcessor2_0 runs the very ops _hooked runs (to_q/k/v, SDPA on the same head
    # split, to_out), and a weight of 0 adds nothing between them.
    assert torch.equal(_hooked(attn, x, text, terms), attn(x, encoder_hidden_states=text))


@torch.no_grad()
def test_full_adapter_path_equals_diffusers_at_every_layer():
    """Projection → per-layer K/V → UnitKV rows → image term, against diffusers per layer."""
    widths = tiny_widths(SD15_WIDTHS)
    tensors = adapter_tensors(adapter_shapes("resampler", CTX, widths, 48, tokens=8, inner=64), seed=4)
    model = IPAdapterModel.from_tensors(tensors, "plus.bin")
    enc = EncodedImages(hidden=torch.randn(1, 9, 48))
    cond = model.project(enc).reshape(1, -1, CTX)
    uncond = model.project(EncodedImages(hidden=torch.randn(1, 9, 48))).reshape(1, -1, CTX)
    kv = UnitKV(model, cond, uncond, "cpu", torch.float32)
    layout = (True, True, False)  # two cond rows then one uncond row
    for n, width in enumerate(widths):
        attn = _attn(width, seed=n)
        proc = IPAdapterAttnProcessor2_0(hidden_size=width, cross_attention_dim=CTX, num_tokens=[8], scale=0.75)
        proc.to_k_ip[0].weight.copy_(tensors.ip_adapter[f"{2 * n + 1}.to_k_ip.weight"])
        proc.to_v_ip[0].weight.copy_(tensors.ip_adapter[f"{2 * n + 1}.to_v_ip.weight"])
        attn.set_processor(proc)
        x, text = torch.randn(3, 12, width), torch.randn(3, 5, CTX)
        rows = torch.cat((cond, cond, uncond))
        expected = attn(x, encoder_hidden_states=(text, [rows[:, None]]))
        k, v = kv.rows(n, layout)
        got = _hooked(attn, x, text, [ImageKV(k, v, 0.75)])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _naive(q, k, v, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh = q.view(b, n, heads, d).transpose(1, 2)
    kh = k.view(b, -1, heads, d).transpose(1, 2)
    vh = v.view(b, -1, heads, d).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / d**0.5, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, n, inner)


@pytest.mark.parametrize("width", [320, 640, 1280])
def test_weight_modes_match_their_formulas(width):
    torch.manual_seed(width)
    q, k, v = torch.randn(2, 10, width), torch.randn(2, 4, width), torch.randn(2, 4, width)
    w = 0.7
    c = width / 1280
    mean = v.mean(dim=1, keepdim=True)
    expected = {
        WeightMode.V_ONLY: w * _naive(q, k, v, 8),
        WeightMode.KV: _naive(q, w * k, w * v, 8),
        WeightMode.KV_PENALTY: _naive(q, w * c * k, w * c * v, 8),
        WeightMode.K_MEAN_V_PENALTY: _naive(q, w * c * k, (v - mean) + w * c * mean, 8),
    }
    for mode, ref in expected.items():
        got = add_image_attention(torch.zeros_like(q), q, 8, [ImageKV(k, v, w, SCALERS[mode])])
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_shared_kv_row_broadcasts_and_upcast_keeps_dtype():
    q = torch.randn(3, 10, 64, dtype=torch.bfloat16)
    k, v = torch.randn(1, 4, 64), torch.randn(1, 4, 64)
    got = add_image_attention(torch.zeros_like(q), q, 2, [ImageKV(k, v, 1.0)], upcast=True)
    assert got.dtype == torch.bfloat16 and got.shape == q.shape
    ref = _naive(q.float(), k.expand(3, -1, -1), v.expand(3, -1, -1), 2)
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)
