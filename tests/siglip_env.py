"""Tiny SigLIP vision towers in the real file format, written with torch alone.

The key names are those of ``google/siglip-so400m-patch14-384``'s ``model.safetensors``
(``vision_model.*``; the text tower is there too, and ignored), so files written here load
wherever that file loads. No transformers is needed to write them: the e2e suite writes one from
the test venv, whose transformers (4.30.2) has no SigLIP. ``tests/test_siglip.py`` checks the
names against transformers' own ``SiglipVisionModel`` where it exists.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

#: A tiny tower: 128 wide (2 heads of 64, as the width/64 rule infers), 3 layers, 56 px in
#: patches of 14 (a 4×4 grid: 16 tokens).
TINY_SIGLIP = {"hidden": 128, "layers": 3, "intermediate": 96, "image": 56, "patch": 14}


def siglip_tensors(
    hidden: int = 128,
    layers: int = 3,
    intermediate: int = 96,
    image: int = 56,
    patch: int = 14,
    head: bool = True,
    seed: int = 0,
    prefix: str = "vision_model.",
    text_tower: bool = True,
) -> dict[str, torch.Tensor]:
    """Random weights of a sensible scale (matrices 1/√fan-in, norms near 1) under SigLIP's names."""
    g = torch.Generator().manual_seed(seed)

    def lin(out: int, inp: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(out, inp, generator=g) / inp**0.5, 0.02 * torch.randn(out, generator=g)

    def norm(width: int) -> tuple[torch.Tensor, torch.Tensor]:
        return 1 + 0.1 * torch.randn(width, generator=g), 0.1 * torch.randn(width, generator=g)

    t: dict[str, torch.Tensor] = {}

    def put(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
        t[f"{name}.weight"], t[f"{name}.bias"] = pair

    grid = image // patch
    t["embeddings.patch_embedding.weight"] = (
        torch.randn(hidden, 3, patch, patch, generator=g) / (3 * patch * patch) ** 0.5
    )
    t["embeddings.patch_embedding.bias"] = 0.02 * torch.randn(hidden, generator=g)
    t["embeddings.position_embedding.weight"] = 0.1 * torch.randn(grid * grid, hidden, generator=g)
    for i in range(layers):
        layer = f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            put(f"{layer}.self_attn.{proj}", lin(hidden, hidden))
        put(f"{layer}.layer_norm1", norm(hidden))
        put(f"{layer}.layer_norm2", norm(hidden))
        put(f"{layer}.mlp.fc1", lin(intermediate, hidden))
        put(f"{layer}.mlp.fc2", lin(hidden, intermediate))
    put("post_layernorm", norm(hidden))
    if head:
        t["head.probe"] = torch.randn(1, 1, hidden, generator=g)
        t["head.attention.in_proj_weight"] = torch.randn(3 * hidden, hidden, generator=g) / hidden**0.5
        t["head.attention.in_proj_bias"] = 0.02 * torch.randn(3 * hidden, generator=g)
        put("head.attention.out_proj", lin(hidden, hidden))
        put("head.layernorm", norm(hidden))
        put("head.mlp.fc1", lin(intermediate, hidden))
        put("head.mlp.fc2", lin(hidden, intermediate))
    out = {prefix + k: v for k, v in t.items()}
    if text_tower:  # a full SigLIP file holds the text tower and the logit scale too
        out["text_model.embeddings.token_embedding.weight"] = torch.randn(10, hidden, generator=g)
        out["logit_scale"], out["logit_bias"] = torch.ones(1), torch.zeros(1)
    return out


def save_siglip(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in siglip_tensors(**kw).items()}, str(path))
    return path
