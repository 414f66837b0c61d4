"""The image term of decoupled cross-attention for one layer.

``Z = Attn(q, K_text, V_text) + Σ_units term(q, K_ip, V_ip, w)``, all before ``to_out``. The host
computes the text part with whatever attention implementation is active and adds the value
returned here to the input of ``to_out``, so the output projection and its bias run exactly once.

The weight modes differ only in how ``w`` enters (paper/diffusers scale the output; ComfyUI's
modes scale K and V, optionally with a per-layer width penalty). The mode is resolved to a function
once, so the per-call path has no branching on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

#: Width at which the channel penalty is 1 (SD's deepest cross-attention layers).
PENALTY_REFERENCE_WIDTH = 1280.0


class WeightMode(str, Enum):
    """Named as ComfyUI_IPAdapter_plus's ``embeds_scaling``, so settings carry over."""

    V_ONLY = "V only"  # w · Attn(q, K, V): the paper's λ, diffusers' scale
    KV = "K+V"  # Attn(q, wK, wV): w also sharpens/flattens the softmax
    KV_PENALTY = "K+V w/ C penalty"  # as KV with w' = w · C / 1280
    K_MEAN_V_PENALTY = "K+mean(V) w/ C penalty"  # K ← w'K, V ← (V − mean V) + w'·mean V


# (k, v, weight) → (k, v) such that Attn(q, k, v) is the weighted term.
_Scaler = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def _v_only(k: torch.Tensor, v: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    # w · softmax(qKᵀ)V == softmax(qKᵀ)(wV): scaling the T value rows is cheaper than the N outputs.
    return k, v * w


def _kv(k: torch.Tensor, v: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    return k * w, v * w


def _kv_penalty(k: torch.Tensor, v: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _kv(k, v, w * k.shape[-1] / PENALTY_REFERENCE_WIDTH)


def _k_mean_v_penalty(k: torch.Tensor, v: torch.Tensor, w: float) -> tuple[torch.Tensor, torch.Tensor]:
    w = w * k.shape[-1] / PENALTY_REFERENCE_WIDTH
    mean = v.mean(dim=-2, keepdim=True)
    return k * w, (v - mean) + mean * w


SCALERS: dict[WeightMode, _Scaler] = {
    WeightMode.V_ONLY: _v_only,
    WeightMode.KV: _kv,
    WeightMode.KV_PENALTY: _kv_penalty,
    WeightMode.K_MEAN_V_PENALTY: _k_mean_v_penalty,
}


@dataclass(frozen=True)
class ImageKV:
    """One adapter's keys and values at one layer, already laid out for the rows of ``q``."""

    k: torch.Tensor  # [B, T, inner], or [1, T, inner] shared by every row
    v: torch.Tensor
    weight: float
    scaler: _Scaler = _v_only
    #: Scales the term per spatial token: [1, 1, N, 1] (regions); with groups, [G, N] (each
    #: group's band, times the region), and then required.
    mask: torch.Tensor | None = None
    #: Called with the term's output [B, heads, N, d] after the mask (attention maps); must not modify it.
    record: Callable[[torch.Tensor], None] | None = None
    #: The tokens are G groups of T side by side (a tiled reference), each with its own softmax and
    #: its own row of ``mask``; all groups go through one attention call.
    groups: int = 1


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def add_image_attention(
    z: torch.Tensor, q: torch.Tensor, heads: int, terms: Iterable[ImageKV], upcast: bool = False
) -> torch.Tensor:
    """``z + Σ term`` for the text-attention output ``z`` and query ``q`` (both [B, N, inner],
    before the head split). Returns ``z`` itself when no term applies: a weight of exactly 0 skips
    its adapter, so weight 0 is bit-identical to no adapter.

    The sum stays in the attention's [B, heads, N, d] layout and is added to ``z`` through a
    strided view, so the only full-size passes are the attention itself and one add.
    ``upcast`` runs the attention in fp32, honouring the host's "upcast cross attention" setting.
    A term's ``mask`` multiplies its output per token; where it is 0 the term adds exactly 0.
    A term's ``record`` sees that output (the attention map reuses it; no second pass).
    """
    b, n, inner = q.shape
    terms = [term for term in terms if term.weight != 0]
    if not terms:
        return z
    acc = sum_image_terms(_split_heads(q.float() if upcast else q, heads), terms)
    if acc is None:
        return z
    summed = z.reshape(b, n, heads, inner // heads) + acc.transpose(1, 2)
    return summed.reshape(b, n, inner).to(z.dtype)


def sum_image_terms(qh: torch.Tensor, terms: Iterable[ImageKV]) -> torch.Tensor | None:
    """``Σ mask · Attn(qh, K, V)`` over the terms with a non-zero weight, for a query already split
    into heads ([B, heads, N, d]); ``None`` when no term applies. Each term's K/V ([B or 1, T,
    heads·d]) are split like the query; the softmax is the term's own, over its image tokens."""
    acc: torch.Tensor | None = None
    b, heads = qh.shape[0], qh.shape[1]
    for term in terms:
        if term.weight == 0:
            continue
        # K/V follow the query: a host may run the UNet elsewhere than where they were built
        # (A1111's --medvram/--lowvram move it in forward pre-hooks). No copy when they match.
        if term.groups > 1:
            out = _grouped_term(qh, term)
        else:
            k = term.k.to(device=qh.device, dtype=qh.dtype)
            v = term.v.to(device=qh.device, dtype=qh.dtype)
            k, v = term.scaler(k, v, term.weight)
            out = F.scaled_dot_product_attention(
                qh, _split_heads(k.expand(b, -1, -1), heads), _split_heads(v.expand(b, -1, -1), heads)
            )
            if term.mask is not None:
                out = out * term.mask.to(device=out.device, dtype=out.dtype)
        if term.record is not None:
            term.record(out)
        acc = out if acc is None else acc + out
    return acc


def _grouped_term(qh: torch.Tensor, term: ImageKV) -> torch.Tensor:
    """``Σ_g mask_g · Attn(q, K_g, V_g)`` with the cost of one attention over all the groups' tokens:
    the scores are taken once against every token, the softmax runs per group (every group has its
    own, as if each tile were its own unit), each group's probabilities are scaled by its band of
    ``mask``, and one product with all the values sums the groups. Repeating the query once per group
    (one attention call with the groups as extra heads) cost 4× the one-image path per layer
    (benchmarks/tiles_step.py). The weight mode scales each group alone (K+mean(V) takes the mean
    over the group's tokens)."""
    b, heads, n, d = qh.shape
    g = term.groups
    if term.mask is None or term.mask.shape != (g, n):
        raise ValueError(f"a term of {g} token groups needs a [{g}, {n}] mask")
    rows, tokens, inner = term.k.shape
    k, v = (t.to(device=qh.device, dtype=qh.dtype).view(rows, g, tokens // g, inner) for t in (term.k, term.v))
    k, v = term.scaler(k, v, term.weight)
    kh, vh = (_split_heads(t.reshape(rows, tokens, inner).expand(b, -1, -1), heads) for t in (k, v))
    # scaled before the product, as SDPA does, so fp16 scores stay in range; the softmax runs in fp32
    scores = torch.matmul(qh * d**-0.5, kh.transpose(-1, -2)).float()  # [B, heads, N, G·T]
    probs = scores.view(b, heads, n, g, tokens // g).softmax(dim=-1)
    probs = probs * term.mask.to(device=probs.device, dtype=probs.dtype).t().unsqueeze(-1)  # [N, G, 1]
    return torch.matmul(probs.view(b, heads, n, tokens).to(vh.dtype), vh)
