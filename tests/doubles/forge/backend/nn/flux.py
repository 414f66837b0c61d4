"""Double of ``backend/nn/flux.py`` of lllyasviel/stable-diffusion-webui-forge (dfdcbab6), in
behaviour and module names (own implementation, no Forge code):

* ``IntegratedFluxTransformer2DModel(in_channels, vec_in_dim, context_in_dim, hidden_size,
  mlp_ratio, num_heads, depth, depth_single_blocks, axes_dim, theta, qkv_bias, guidance_embed)``
  with ``img_in``, ``time_in``/``vector_in``/``guidance_in`` (``in_layer``/``out_layer``),
  ``txt_in``, ``pe_embedder``, ``double_blocks``, ``single_blocks``, ``final_layer``.
* ``forward(x, timestep, context, y, guidance=None, **kwargs)``: the latent [B, C, H, W] is padded
  circularly to even sides and cut into 2×2 patches (channel-major), image ids are (0, row, col),
  text ids zero; ``transformer_options`` and other keywords are ignored.
* Double block: per stream, ``Modulation`` (shift, scale, gate ×2 from ``lin(silu(vec))``),
  LayerNorm without affine (eps 1e-6), ``qkv`` split as (3, heads, d), ``QKNorm`` (RMSNorm with a
  ``scale`` parameter, eps 1e-6) called as ``img_attn.norm(q, k, v)`` → (q, k), joint attention
  over [txt, img] with RoPE applied inside ``attention``, ``proj``, gated residuals, MLP with
  tanh-GELU. Single block: ``linear1`` → qkv + MLP, ``linear2`` over [attn, gelu(mlp)].
* RoPE: per axis, angles pos·θ^(−2i/dim) in float64, as 2×2 rotation matrices over interleaved
  pairs; timestep embedding: 1000·t, [cos, sin], max period 10000.
* Attention: ``backend.attention.attention_function(q, k, v, heads, skip_reshape=True)``, imported
  into this module's namespace at import time (``from backend.attention import attention_function``)
  and looked up there by ``attention`` on each call, as in Forge.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from backend.attention import attention_function


def attention(q, k, v, pe):
    q, k = apply_rope(q, k, pe)
    return attention_function(q, k, v, q.shape[1], skip_reshape=True)


def rope(pos, dim, theta):
    scale = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    angles = pos.to(torch.float64).unsqueeze(-1) / (theta**scale)
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.view(*rot.shape[:-1], 2, 2).float()


def apply_rope(xq, xk, freqs):
    def rotate(x):
        pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
        out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
        return out.reshape(*x.shape).type_as(x)

    return rotate(xq), rotate(xk)


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return emb.to(t) if torch.is_floating_point(t) else emb


class EmbedND(nn.Module):
    def __init__(self, dim, theta, axes_dim):
        super().__init__()
        self.dim, self.theta, self.axes_dim = dim, theta, axes_dim

    def forward(self, ids):
        parts = [rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(ids.shape[-1])]
        return torch.cat(parts, dim=-3).unsqueeze(1)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x):
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.eps = 1e-6

    def forward(self, x):
        return torch.rms_norm(x, [x.shape[-1]], self.scale.to(x.dtype), self.eps)


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        q, k = self.query_norm(q), self.key_norm(k)
        return q.to(k), k.to(q)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec):
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def _mlp(hidden, mlp_hidden):
    return nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden))


def _split_qkv(qkv, heads):
    b, n, _ = qkv.shape
    return qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qkv_bias=False):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.num_heads, self.hidden_size = num_heads, hidden_size
        for side in ("img", "txt"):
            setattr(self, f"{side}_mod", Modulation(hidden_size, double=True))
            setattr(self, f"{side}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_attn", SelfAttention(hidden_size, num_heads, qkv_bias))
            setattr(self, f"{side}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{side}_mlp", _mlp(hidden_size, mlp_hidden))

    def forward(self, img, txt, vec, pe):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        img_q, img_k, img_v = _split_qkv(
            self.img_attn.qkv((1 + i_scale1) * self.img_norm1(img) + i_shift1), self.num_heads
        )
        img_q, img_k = self.img_attn.norm(img_q, img_k, img_v)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        txt_q, txt_k, txt_v = _split_qkv(
            self.txt_attn.qkv((1 + t_scale1) * self.txt_norm1(txt) + t_shift1), self.num_heads
        )
        txt_q, txt_k = self.txt_attn.norm(txt_q, txt_k, txt_v)
        out = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2), pe=pe)
        txt_attn, img_attn = out[:, : txt.shape[1]], out[:, txt.shape[1] :]
        img = img + i_gate1 * self.img_attn.proj(img_attn)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * self.img_norm2(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_attn)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * self.txt_norm2(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(
            self.linear1((1 + scale) * self.pre_norm(x) + shift), [3 * self.hidden_size, self.mlp_hidden_dim], -1
        )
        q, k, v = _split_qkv(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe=pe), self.mlp_act(mlp)), 2))
        return x + gate * out


class LastLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


class IntegratedFluxTransformer2DModel(nn.Module):
    def __init__(
        self,
        in_channels,
        vec_in_dim,
        context_in_dim,
        hidden_size,
        mlp_ratio,
        num_heads,
        depth,
        depth_single_blocks,
        axes_dim,
        theta,
        qkv_bias,
        guidance_embed,
    ):
        super().__init__()
        self.guidance_embed = guidance_embed
        self.in_channels = self.out_channels = in_channels * 4
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.pe_embedder = EmbedND(hidden_size // num_heads, theta, axes_dim)
        self.img_in = nn.Linear(self.in_channels, hidden_size, bias=True)
        self.time_in = MLPEmbedder(256, hidden_size)
        self.vector_in = MLPEmbedder(vec_in_dim, hidden_size)
        self.guidance_in = MLPEmbedder(256, hidden_size) if guidance_embed else nn.Identity()
        self.txt_in = nn.Linear(context_in_dim, hidden_size)
        self.double_blocks = nn.ModuleList(
            [DoubleStreamBlock(hidden_size, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)]
        )
        self.single_blocks = nn.ModuleList(
            [SingleStreamBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth_single_blocks)]
        )
        self.final_layer = LastLayer(hidden_size, 1, self.out_channels)

    def inner_forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for block in self.double_blocks:
            img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        x = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            x = block(x, vec=vec, pe=pe)
        return self.final_layer(x[:, txt.shape[1] :, ...], vec)

    def forward(self, x, timestep, context, y, guidance=None, **kwargs):
        bs, c, h, w = x.shape
        x = nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="circular")
        hl, wl = (h + 1) // 2, (w + 1) // 2
        img = x.view(bs, c, hl, 2, wl, 2).permute(0, 2, 4, 1, 3, 5).reshape(bs, hl * wl, c * 4)
        img_ids = torch.zeros(hl, wl, 3, device=x.device, dtype=x.dtype)
        img_ids[..., 1] += torch.arange(hl, device=x.device, dtype=x.dtype)[:, None]
        img_ids[..., 2] += torch.arange(wl, device=x.device, dtype=x.dtype)[None, :]
        img_ids = img_ids.reshape(1, hl * wl, 3).expand(bs, -1, -1)
        txt_ids = torch.zeros(bs, context.shape[1], 3, device=x.device, dtype=x.dtype)
        out = self.inner_forward(img, img_ids, context, txt_ids, timestep, y, guidance)
        out = out.view(bs, hl, wl, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(bs, c, hl * 2, wl * 2)
        return out[:, :, :h, :w]
