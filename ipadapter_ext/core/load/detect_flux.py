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


# -- InstantX ---------------------------------------------------------------------------------
_KV_WEIGHT = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")
_MLP_KEYS = {f"image_proj.{m}.{p}" for m in ("proj.0", "proj.2", "norm") for p in ("weight", "bias")}


@dataclass(frozen=True)
class InstantXLayout:
    """InstantX's FLUX.1-dev IP-Adapter: an MLP projection of SigLIP's pooled output to T tokens,
    and one K/V pair without bias per transformer block, double blocks first, then single ones."""

    context_dim: int  # 4096: the image tokens' width (T5's)
    hidden: int  # 3072: the transformer's hidden width
    blocks: int  # 57 = 19 double + 38 single for Flux.1
    tokens: int  # 128
    embed_dim: int  # 1152: SigLIP so400m's pooled width
    mlp_hidden: int  # 2304


def is_instantx_layout(shapes: Mapping[str, Shape]) -> bool:
    """K/V numbered from 0 without bias (SD numbers 1, 3, 5 …; XLabs has biases) and the MLP."""
    return (
        "ip_adapter.0.to_k_ip.weight" in shapes and not is_flux_layout(shapes) and "image_proj.proj.0.weight" in shapes
    )


def read_instantx_layout(shapes: Mapping[str, Shape], filename: str = "adapter") -> InstantXLayout:
    blocks = sorted(int(m.group(1)) for k in shapes if (m := _KV_WEIGHT.match(k)))
    if blocks != list(range(len(blocks))):
        raise ModelFileError(
            f"{filename}: the InstantX adapter's block numbers are not 0, 1, 2, … (found {blocks[:6]}…). "
            "The file is damaged or from an unsupported converter."
        )
    widths = set()
    for n in blocks:
        k, v = shapes.get(f"ip_adapter.{n}.to_k_ip.weight"), shapes.get(f"ip_adapter.{n}.to_v_ip.weight")
        if k is None or len(k) != 2 or v != k:
            raise ModelFileError(
                f"{filename}: block {n} has K {k} and V {v}; they must be equal matrices. The file is damaged."
            )
        widths.add(k)
    if len(widths) != 1:
        raise ModelFileError(f"{filename}: the blocks disagree on their widths ({sorted(widths)}).")
    hidden, ctx = widths.pop()
    proj_keys = {k for k in shapes if k.startswith("image_proj.")}
    if proj_keys != _MLP_KEYS:
        raise ModelFileError(
            f"{filename}: an InstantX-style adapter with an unknown image projection (keys {sorted(proj_keys)[:6]})."
        )
    mlp_hidden, embed = shapes["image_proj.proj.0.weight"]
    rows, inner = shapes["image_proj.proj.2.weight"]
    if inner != mlp_hidden or shapes["image_proj.norm.weight"] != (ctx,) or rows % ctx:
        raise ModelFileError(
            f"{filename}: the projection gives {rows} values from {inner} and a norm over "
            f"{shapes['image_proj.norm.weight']}, which is no whole number of {ctx}-wide tokens. The file is damaged."
        )
    return InstantXLayout(ctx, hidden, len(blocks), rows // ctx, embed, mlp_hidden)


# -- Redux ------------------------------------------------------------------------------------
REDUX_KEYS = ("redux_up.weight", "redux_up.bias", "redux_down.weight", "redux_down.bias")


@dataclass(frozen=True)
class ReduxLayout:
    """Flux Redux (``flux1-redux-dev.safetensors``): SigLIP's last hidden state → ``redux_up`` →
    SiLU → ``redux_down`` → one context token per SigLIP patch, as wide as T5's."""

    embed_dim: int  # 1152
    hidden: int  # 12288
    context_dim: int  # 4096


def is_redux_layout(shapes: Mapping[str, Shape]) -> bool:
    return "redux_up.weight" in shapes or "image_proj.redux_up.weight" in shapes


def read_redux_layout(shapes: Mapping[str, Shape], filename: str = "redux") -> ReduxLayout:
    prefix = "image_proj." if "image_proj.redux_up.weight" in shapes else ""
    try:
        up, up_bias = shapes[f"{prefix}redux_up.weight"], shapes[f"{prefix}redux_up.bias"]
        down, down_bias = shapes[f"{prefix}redux_down.weight"], shapes[f"{prefix}redux_down.bias"]
    except KeyError as exc:
        raise ModelFileError(f"{filename}: a Flux Redux file without {exc}. The file is damaged.") from exc
    if len(up) != 2 or len(down) != 2 or down[1] != up[0] or up_bias != (up[0],) or down_bias != (down[0],):
        raise ModelFileError(
            f"{filename}: redux_up {up} and redux_down {down} do not chain (with their biases). The file is damaged."
        )
    return ReduxLayout(embed_dim=up[1], hidden=up[0], context_dim=down[0])
