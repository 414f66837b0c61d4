"""Checkpoint shapes and tiny random weights in the real file formats.

Key names are written out here by hand from the original repository's layout (not generated
from our modules), so loading them into our projections also checks our naming.
"""

from __future__ import annotations

import torch

from ipadapter_ext.core.load.formats import AdapterTensors

Shapes = dict[str, tuple[int, ...]]

# Cross-attention widths in checkpoint key order (down blocks, up blocks, middle block).
SD15_WIDTHS = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)
SDXL_WIDTHS = (640,) * 4 + (1280,) * 20 + (1280,) * 30 + (640,) * 6 + (1280,) * 10


def tiny_widths(widths: tuple[int, ...], scale: int = 20) -> tuple[int, ...]:
    """Real topology, small layers: 320/640/1280 → 16/32/64 with the default scale."""
    return tuple(w // scale for w in widths)


def ip_layers(ctx: int, widths: tuple[int, ...], lora_rank: int = 0) -> Shapes:
    shapes: Shapes = {}
    for n, w in enumerate(widths):
        shapes[f"ip_adapter.{2 * n + 1}.to_k_ip.weight"] = (w, ctx)
        shapes[f"ip_adapter.{2 * n + 1}.to_v_ip.weight"] = (w, ctx)
    if lora_rank:
        for n, w in enumerate(widths):
            for key in (2 * n, 2 * n + 1):  # attn1 (self) and attn2 (cross) both carry LoRA
                for proj in ("q", "k", "v", "out"):
                    # attn2's to_k/to_v read the text context; everything else the layer's own width.
                    width_in = ctx if key % 2 and proj in ("k", "v") else w
                    shapes[f"ip_adapter.{key}.to_{proj}_lora.down.weight"] = (lora_rank, width_in)
                    shapes[f"ip_adapter.{key}.to_{proj}_lora.up.weight"] = (w, lora_rank)
    return shapes


def _linear(shapes: Shapes, name: str, out: int, inp: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (out, inp)
    if bias:
        shapes[f"{name}.bias"] = (out,)


def _norm(shapes: Shapes, name: str, dim: int) -> None:
    shapes[f"{name}.weight"] = (dim,)
    shapes[f"{name}.bias"] = (dim,)


def perceiver(
    prefix: str, in_dim: int, dim: int, out_dim: int, inner: int, depth: int = 4, tokens: int | None = None
) -> Shapes:
    shapes: Shapes = {}
    if tokens is not None:
        shapes[f"{prefix}latents"] = (1, tokens, dim)
    _linear(shapes, f"{prefix}proj_in", dim, in_dim)
    _linear(shapes, f"{prefix}proj_out", out_dim, dim)
    _norm(shapes, f"{prefix}norm_out", out_dim)
    for i in range(depth):
        layer = f"{prefix}layers.{i}"
        _norm(shapes, f"{layer}.0.norm1", dim)
        _norm(shapes, f"{layer}.0.norm2", dim)
        _linear(shapes, f"{layer}.0.to_q", inner, dim, bias=False)
        _linear(shapes, f"{layer}.0.to_kv", 2 * inner, dim, bias=False)
        _linear(shapes, f"{layer}.0.to_out", dim, inner, bias=False)
        _norm(shapes, f"{layer}.1.0", dim)
        _linear(shapes, f"{layer}.1.1", 4 * dim, dim, bias=False)
        _linear(shapes, f"{layer}.1.3", dim, 4 * dim, bias=False)
    return shapes


def image_proj_shapes(
    kind: str, ctx: int, enc: int, tokens: int = 4, id_dim: int = 512, res_dim: int | None = None, inner: int = 64
) -> Shapes:
    """``kind``: base, full, resampler, faceid (MLP), faceid_plus."""
    s: Shapes = {}
    p = "image_proj."
    if kind == "base":
        _linear(s, p + "proj", tokens * ctx, enc)
        _norm(s, p + "norm", ctx)
    elif kind == "full":
        _linear(s, p + "proj.0", enc, enc)
        _linear(s, p + "proj.2", ctx, enc)
        _norm(s, p + "proj.3", ctx)
    elif kind == "resampler":
        s.update(perceiver(p, enc, res_dim or ctx, ctx, inner, tokens=tokens))
    elif kind in ("faceid", "faceid_plus"):
        _linear(s, p + "proj.0", 2 * id_dim, id_dim)
        _linear(s, p + "proj.2", tokens * ctx, 2 * id_dim)
        _norm(s, p + "norm", ctx)
        if kind == "faceid_plus":
            s.update(perceiver(p + "perceiver_resampler.", enc, ctx, ctx, inner))
    else:
        raise ValueError(kind)
    return s


def adapter_shapes(kind: str, ctx: int, widths: tuple[int, ...], enc: int, lora_rank: int = 0, **kw) -> Shapes:
    shapes = image_proj_shapes(kind, ctx, enc, **kw)
    shapes.update(ip_layers(ctx, widths, lora_rank))
    return shapes


def random_tensors(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with non-trivial norms (LayerNorm affines 1±0.1, biases ±0.1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        t = torch.randn(shape, generator=g)
        if len(shape) == 1:
            is_norm_weight = key.endswith(".weight")
            t = 1 + 0.1 * t if is_norm_weight else 0.1 * t
        else:
            fan_in = shape[-1]
            t = t / fan_in**0.5
        out[key] = t.contiguous()
    return out


def adapter_tensors(shapes: Shapes, seed: int = 0) -> AdapterTensors:
    flat = random_tensors(shapes, seed)
    image_proj = {k[len("image_proj.") :]: v for k, v in flat.items() if k.startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter.") :]: v for k, v in flat.items() if k.startswith("ip_adapter.")}
    return AdapterTensors(image_proj, ip_adapter)
