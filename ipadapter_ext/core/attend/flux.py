"""The image term of XLabs' Flux IP-Adapters, for one double-stream block.

In every double block the image stream's query, taken after its RMSNorm and before RoPE
(``[B, heads, L, d]``), attends over each unit's image tokens with a softmax of its own; the
result, merged to ``[B, L, heads·d]`` and scaled by the unit's weight, is added to the block's
image output after its MLP residual, ungated: ``img ← img + Σ_units w · Attn(q, K_ip, V_ip)``.
Single-stream blocks are untouched.

The terms come from :func:`~..job.layer_terms` (the entry point of every host), with the double
block's index as the layer: K/V computed once per generation, laid out per row (cond rows see the
reference, uncond rows the negative), weights, start/end and region masks as on SD. A unit at
weight 0 has no term, so the block's output is returned untouched, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .attention import ImageKV, sum_image_terms


def flux_image_term(q: torch.Tensor, terms: Sequence[ImageKV], upcast: bool = False) -> torch.Tensor | None:
    """``Σ w · softmax(q Kᵀ/√d) V`` as ``[B, L, heads·d]`` for the image-stream query ``q``
    ([B, heads, L, d], after RMSNorm, before RoPE), or ``None`` when no term applies."""
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
