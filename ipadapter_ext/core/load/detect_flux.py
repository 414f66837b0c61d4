"""XLabs Flux IP-Adapters (v1, v2), recognised and measured from their tensor shapes.

A Flux adapter holds an ``ImageProjModel``-shaped projection (``proj`` Linear from the CLIP image
embeds to T·C, then a LayerNorm over C) and, per double-stream block, a K and a V Linear from C to
the transformer's hidden width, *with* bias. The bias is what tells it apart from an SD adapter
in the shared ``image_proj.``/``ip_adapter.`` layout: SD's ``to_k_ip``/``to_v_ip`` have none, and
SD numbers its layers 1, 3, 5, …, Flux its blocks 0, 1, 2, ….

Nothing is assumed from the file name or a version: v1 has 4 tokens, v2 16, and both are read
from ``proj.weight``'s rows divided by the K/V input width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ModelFileError
from .formats import Shape

_KV_BIAS = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.bias$")
_PROJ_KEYS = {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"}


@dataclass(frozen=True)
class FluxLayout:
    """What the shapes say: widths, block count and tokens per reference image."""

    context_dim: int  # width of the image tokens (K/V input), 4096 for XLabs' files
    hidden: int  # the transformer's hidden width (K/V output), 3072 for Flux.1
    blocks: int  # double-stream blocks with a K/V pair, 19 for Flux.1
    tokens: int  # image tokens per reference
    embed_dim: int  # CLIP image_embeds width the projection takes (768: ViT-L/14)


def is_flux_layout(shapes: Mapping[str, Shape]) -> bool:
    """True for canonical shapes (:func:`~.formats.normalise_shapes`) of a Flux adapter."""
    return any(_KV_BIAS.match(k) for k in shapes)


def read_flux_layout(shapes: Mapping[str, Shape], filename: str = "adapter") -> FluxLayout:
    """Measure a Flux adapter from canonical shapes; :class:`ModelFileError` names what is off."""
    blocks = sorted(int(m.group(1)) for k in shapes if (m := _KV_BIAS.match(k)))
    if blocks != list(range(len(blocks))):
        raise ModelFileError(
            f"{filename}: the Flux adapter's double-block numbers are not 0, 1, 2, … (found {blocks[:6]}…). "
            "The file is damaged or from an unsupported converter."
        )
    widths: set[tuple[int, int]] = set()
    for n in blocks:
        parts = [shapes.get(f"ip_adapter.{n}.to_{kv}_ip.{p}") for kv in "kv" for p in ("weight", "bias")]
        kw, kb, vw, vb = parts
        if kw is None or len(kw) != 2 or vw != kw or kb != (kw[0],) or vb != kb:
            raise ModelFileError(
                f"{filename}: double block {n} has K {kw}/{kb} and V {vw}/{vb}; they must be equal Linear "
                "layers with bias. The file is damaged."
            )
        widths.add((kw[0], kw[1]))
    if len(widths) != 1:
        raise ModelFileError(f"{filename}: the double blocks disagree on their widths ({sorted(widths)}).")
    hidden, ctx = widths.pop()
    proj_keys = {k for k in shapes if k.startswith("image_proj.")}
    if proj_keys != _PROJ_KEYS:
        raise ModelFileError(
            f"{filename}: a Flux adapter with an unknown image projection (keys {sorted(proj_keys)[:6]}). "
            "Only XLabs' linear projection (ip_adapter_proj_model.proj/norm) is supported."
        )
    rows, embed_dim = shapes["image_proj.proj.weight"]
    if shapes["image_proj.norm.weight"] != (ctx,) or rows % ctx or shapes["image_proj.proj.bias"] != (rows,):
        raise ModelFileError(
            f"{filename}: the projection gives {rows} values and a norm over "
            f"{shapes['image_proj.norm.weight']}, which is no whole number of {ctx}-wide tokens for the blocks. "
            "The file is damaged."
        )
    return FluxLayout(context_dim=ctx, hidden=hidden, blocks=len(blocks), tokens=rows // ctx, embed_dim=embed_dim)
