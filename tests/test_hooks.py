"""Hooks on the WebUI's own ldm CrossAttention (stable-diffusion-sdkit, byte-identical to A1111's)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from ldm.modules.attention import CrossAttention

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks

WIDTH, CTX, HEADS, T = 64, 32, 4, 6


@pytest.fixture
def attn():
    torch.manual_seed(0)
    module = CrossAttention(query_dim=WIDTH, context_dim=CTX, heads=HEADS, dim_head=WIDTH // HEADS).eval()
    with torch.no_grad():
        module.to_out[0].bias.normal_()  # a visible bias, to see that it is applied once
    return module


@pytest.fixture
def image_kv():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, T, WIDTH, generator=g), torch.randn(1, T, WIDTH, generator=g)


def _inputs(seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 20, WIDTH, generator=g), torch.randn(2, 7, CTX, generator=g)


def _provider(k, v, weight):
    return lambda _layer, _q, _ctx: [ImageKV(k, v, weight)]


@torch.no_grad()
def test_weight_zero_is_bit_identical_and_weight_changes_output(attn, image_kv):
    x, ctx = _inputs()
    plain = attn(x, context=ctx)
    with Attn2Hooks([attn], _provider(*image_kv, 0.0)):
        assert torch.equal(attn(x, context=ctx), plain)
    with Attn2Hooks([attn], lambda *_: []):
        assert torch.equal(attn(x, context=ctx), plain)
    with Attn2Hooks([attn], _provider(*image_kv, 0.8)):
        changed = attn(x, context=ctx)
    assert not torch.allclose(changed, plain)
    assert torch.equal(attn(x, context=ctx), plain)  # removed on exit


@torch.no_grad()
def test_bias_applied_once_equals_manual(attn, image_kv):
    x, ctx = _inputs()
    k, v = image_kv
    with Attn2Hooks([attn], _provider(k, v, 0.5)):
        got = attn(x, context=ctx)
    q = attn.to_q(x)
    sim = torch.softmax(
        torch.einsum("bnhd,bthd->bhnt", q.view(2, 20, HEADS, -1), attn.to_k(ctx).view(2, 7, HEADS, -1)) * attn.scale, -1
    )
    z = torch.einsum("bhnt,bthd->bnhd", sim, attn.to_v(ctx).view(2, 7, HEADS, -1)).reshape(2, 20, WIDTH)
    simi = torch.softmax(
        torch.einsum("bnhd,thd->bhnt", q.view(2, 20, HEADS, -1), k[0].view(T, HEADS, -1)) * attn.scale, -1
    )
    zi = torch.einsum("bhnt,thd->bnhd", simi, v[0].view(T, HEADS, -1)).reshape(2, 20, WIDTH)
    expected = attn.to_out(z + 0.5 * zi)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_hooked_ldm_equals_diffusers_processor(attn):
    x, ctx = _inputs()
    ip_tokens = torch.randn(2, T, CTX)
    ref = Attention(query_dim=WIDTH, cross_attention_dim=CTX, heads=HEADS, dim_head=WIDTH // HEADS, out_bias=True)
    proc = IPAdapterAttnProcessor2_0(hidden_size=WIDTH, cross_attention_dim=CTX, num_tokens=[T], scale=0.7)
    for name in ("to_q", "to_k", "to_v"):
        getattr(ref, name).weight.copy_(getattr(attn, name).weight)
    ref.to_out[0].load_state_dict(attn.to_out[0].state_dict())
    proc.to_k_ip[0].weight.normal_(0, 0.2)
    proc.to_v_ip[0].weight.normal_(0, 0.2)
    ref.set_processor(proc)
    expected = ref(x, encoder_hidden_states=(ctx, [ip_tokens[:, None]]))
    k, v = F.linear(ip_tokens, proc.to_k_ip[0].weight), F.linear(ip_tokens, proc.to_v_ip[0].weight)
    with Attn2Hooks([attn], _provider(k, v, 0.7)):
        got = attn(x, context=ctx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _split_forward(self, x, context=None, mask=None, **kwargs):
    """A Doggettx-style forward: heads processed one slice at a time."""
    calls.append("split")
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, _ = q.shape
    qh, kh, vh = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
    out = torch.cat(
        [
            torch.softmax(qh[:, i : i + 1] @ kh[:, i : i + 1].transpose(-1, -2) * self.scale, -1) @ vh[:, i : i + 1]
            for i in range(self.heads)
        ],
        1,
    )
    return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _sdp_forward(self, x, context=None, mask=None, **kwargs):
    """An SDP forward in A1111's style, calling to_out[0] and to_out[1] separately."""
    calls.append("sdp")
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    b, n, _ = q.shape
    qh, kh, vh = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, -1)
    return self.to_out[1](self.to_out[0](out))


def _fused_forward(self, x, context=None, mask=None, **kwargs):
    """A forward that never calls to_q: the hook must compute q itself."""
    calls.append("fused")
    q = F.linear(x, self.to_q.weight)
    k, v = self.to_k(context), self.to_v(context)
    b, n, _ = q.shape
    qh, kh, vh = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, n, -1)
    return self.to_out(out)


calls: list[str] = []


@torch.no_grad()
@pytest.mark.parametrize("forward", [_split_forward, _sdp_forward, _fused_forward])
def test_runs_on_top_of_the_class_forward_active_at_call_time(attn, image_kv, monkeypatch, forward):
    x, ctx = _inputs()
    reference = attn(x, context=ctx)
    with Attn2Hooks([attn], _provider(*image_kv, 0.6)):
        hooked_stock = attn(x, context=ctx)
        calls.clear()
        monkeypatch.setattr(CrossAttention, "forward", forward)  # the host switches optimization mid-way
        hooked_new = attn(x, context=ctx)
        assert calls == [forward.__name__.strip("_").split("_")[0]]
    torch.testing.assert_close(attn(x, context=ctx), reference, atol=1e-5, rtol=0)  # unhooked, new forward
    torch.testing.assert_close(hooked_new, hooked_stock, atol=1e-5, rtol=0)


@torch.no_grad()
def test_exception_mid_call_leaves_nothing_behind(attn, image_kv):
    x, ctx = _inputs()
    plain = attn(x, context=ctx)

    def failing(*_):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"), Attn2Hooks([attn], failing):
        attn(x, context=ctx)
    for m in (attn, attn.to_q, attn.to_out[0]):
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert torch.equal(attn(x, context=ctx), plain)


def test_provider_sees_layer_index_and_context(attn, image_kv):
    torch.manual_seed(3)
    other = CrossAttention(query_dim=WIDTH, context_dim=CTX, heads=HEADS, dim_head=WIDTH // HEADS).eval()
    seen = []

    def provider(layer, q, ctx):
        seen.append((layer, tuple(q.shape), ctx is not None))
        return []

    x, ctx = _inputs()
    with torch.no_grad(), Attn2Hooks([attn, other], provider) as hooks:
        other(x, context=ctx)
        attn(x, context=ctx)
        assert hooks.installed
    assert seen == [(1, (2, 20, WIDTH), True), (0, (2, 20, WIDTH), True)]
    assert not hooks.installed


class SgmStyleCrossAttention(CrossAttention):
    """sgm's CrossAttention signature (SDXL): extra keyword arguments the block passes through."""

    def forward(self, x, context=None, mask=None, additional_tokens=None, n_times_crossframe_attn_in_self=0):
        self.seen_kwargs = (additional_tokens, n_times_crossframe_attn_in_self)
        return super().forward(x, context=context, mask=mask)


@torch.no_grad()
def test_sgm_keyword_arguments_pass_through(image_kv):
    torch.manual_seed(0)
    attn = SgmStyleCrossAttention(query_dim=WIDTH, context_dim=CTX, heads=HEADS, dim_head=WIDTH // HEADS).eval()
    x, ctx = _inputs()
    extra = torch.zeros(2, 1, WIDTH)
    plain = attn(x, context=ctx, additional_tokens=extra, n_times_crossframe_attn_in_self=0)
    with Attn2Hooks([attn], _provider(*image_kv, 0.9)):
        hooked = attn(x, context=ctx, additional_tokens=extra, n_times_crossframe_attn_in_self=0)
    assert attn.seen_kwargs[0] is extra
    assert not torch.allclose(hooked, plain)
