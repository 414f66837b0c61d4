"""The image terms of the Flux IP-Adapters, per transformer block.

**XLabs** (double blocks only): the image stream's query, taken after its RMSNorm and before
RoPE (``[B, heads, L, d]``), attends over each unit's image tokens with a softmax of its own;
the result, merged to ``[B, L, heads·d]`` and scaled by the unit's weight, is added to the
block's image output after its MLP residual, ungated: ``img ← img + Σ w · Attn(q, K_ip, V_ip)``.

**InstantX** (every double and single block): the same attention of the block's query (double:
the image stream's; single: the whole ``[text, image]`` sequence's, after the block's QK norm,
before RoPE) over ``K̂_ip = RMSNorm(K_ip)`` per head (no weight, eps 1e-5; ``V_ip`` is not
normalised) and ``V_ip``, scaled by the weight and added to the block's attention output
*before* its output projection (double: ``img_attn.proj``; single: the attention part of
``linear2``'s input), so the block's gate and projection act on it, as InstantX's attention
processor adds it before ``to_out``. The key norm depends only on the tokens, so it is applied
once per generation (:func:`rms_norm_heads`, from :meth:`~..load.adapter.IPAdapterModel.layer_kv`).

The terms come from :func:`~..job.layer_terms` (the entry point of every host): K/V computed once
per generation, laid out per row (cond rows see the reference, uncond rows the negative),
weights, start/end and region masks as on SD. A unit at weight 0 has no term, so the block's
output is returned untouched, bit for bit. A region mask covers image tokens; in a single block
a masked term adds nothing to the text tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .attention import ImageKV, sum_image_terms

#: InstantX's ``norm_added_k``: diffusers' RMSNorm(head_dim, eps=1e-5, elementwise_affine=False).
INSTANTX_KEY_EPS = 1e-5


def rms_norm_heads(k: torch.Tensor, head_dim: int, eps: float = INSTANTX_KEY_EPS) -> torch.Tensor:
    """``k`` ([…, T, heads·d]) normalised to unit RMS per head, in fp32 (diffusers' RMSNorm
    computes the variance in fp32 too), returned in ``k``'s dtype."""
    if head_dim <= 0 or k.shape[-1] % head_dim:
        raise ValueError(f"keys {k.shape[-1]} wide do not split into heads of {head_dim}")
    heads = k.unflatten(-1, (k.shape[-1] // head_dim, head_dim)).float()
    normed = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + eps)
    return normed.flatten(-2).to(k.dtype)


def flux_image_term(q: torch.Tensor, terms: Sequence[ImageKV], upcast: bool = False) -> torch.Tensor | None:
    """``Σ w · softmax(q Kᵀ/√d) V`` as ``[B, L, heads·d]`` for the query ``q`` ([B, heads, L, d],
    after the QK norm, before RoPE), or ``None`` when no term applies."""
    terms = [t for t in terms if t.weight != 0]
    if not terms:
        return None
    acc = sum_image_terms(q.float() if upcast else q, terms)
    if acc is None:
        return None
    b, heads, length, d = acc.shape
    return acc.transpose(1, 2).reshape(b, length, heads * d)


def add_flux_image_term(
    img: torch.Tensor, q: torch.Tensor, terms: Sequence[ImageKV], upcast: bool = False
) -> torch.Tensor:
    """``img + term`` in ``img``'s dtype, or ``img`` itself when no term applies."""
    term = flux_image_term(q, terms, upcast)
    if term is None:
        return img
    return img + term.to(img.dtype)


def single_stream_terms(terms: Sequence[ImageKV], text_tokens: int) -> list[ImageKV]:
    """``terms`` (masks and attention-map records over the image tokens) for a single block's
    query over ``[text, image]``: a mask is extended with zeros over the text tokens, a record
    sees the image tokens only."""
    if text_tokens <= 0:
        return list(terms)
    out = []
    for term in terms:
        mask, record = term.mask, term.record
        if mask is not None:
            zeros = mask.new_zeros(*mask.shape[:2], text_tokens, mask.shape[3])
            mask = torch.cat((zeros, mask), dim=2)
        if record is not None:
            record = _image_part(record, text_tokens)
        out.append(dataclasses.replace(term, mask=mask, record=record))
    return out


def _image_part(record, text_tokens: int):
    def seen(out: torch.Tensor) -> None:
        record(out[:, :, text_tokens:])

    return seen


def add_to_attention(
    attn: torch.Tensor, q: torch.Tensor, terms: Sequence[ImageKV], upcast: bool = False
) -> torch.Tensor:
    """InstantX: ``attn`` (the block's attention output [B, L, heads·d], or a wider tensor whose
    first heads·d channels are it, as ``linear2``'s input) plus the term, in ``attn``'s dtype."""
    term = flux_image_term(q, terms, upcast)
    if term is None:
        return attn
    width = term.shape[-1]
    if attn.shape[-1] == width:
        return attn + term.to(attn.dtype)
    return torch.cat((attn[..., :width] + term.to(attn.dtype), attn[..., width:]), dim=-1)
