"""Adapter key order ↔ LDM module names, checked against the reference tables and a real ldm UNet."""

from __future__ import annotations

import pytest
import torch

from ipadapter_ext.core.attend.layers import map_ldm_attn2
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.compat import UNetSignature, check_unet
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths

# Reference table (SD1.x): n → (LDM block, block id, t_idx)
SD15_TABLE = [
    ("input", 1, 0), ("input", 2, 1), ("input", 4, 2), ("input", 5, 3), ("input", 7, 4), ("input", 8, 5),
    ("output", 3, 7), ("output", 4, 8), ("output", 5, 9), ("output", 6, 10), ("output", 7, 11), ("output", 8, 12),
    ("output", 9, 13), ("output", 10, 14), ("output", 11, 15), ("middle", 0, 6),
]  # fmt: skip
# Reference table (SDXL): transformers in execution order with their depth, and first checkpoint key
SDXL_TRANSFORMERS = [
    ("input", 4, 2, 1), ("input", 5, 2, 5), ("input", 7, 10, 9), ("input", 8, 10, 29), ("middle", 0, 10, 121),
    ("output", 0, 10, 49), ("output", 1, 10, 69), ("output", 2, 10, 89), ("output", 3, 2, 109), ("output", 4, 2, 113),
    ("output", 5, 2, 117),
]  # fmt: skip


def _name(block, block_id, depth):
    where = "middle_block.1" if block == "middle" else f"{block}_blocks.{block_id}.1"
    return f"model.diffusion_model.{where}.transformer_blocks.{depth}.attn2"


def test_sd15_table():
    names = [_name(b, i, 0) for b, i, _ in reversed(SD15_TABLE)]  # any input order
    slots = map_ldm_attn2(names)
    assert [(s.block, s.block_id, s.transformer_index) for s in slots] == SD15_TABLE
    assert [s.checkpoint_key for s in slots] == list(range(1, 32, 2))


def test_sdxl_table():
    names = [_name(b, i, j) for b, i, depth, _ in SDXL_TRANSFORMERS for j in range(depth)]
    slots = map_ldm_attn2(names)
    assert len(slots) == 70
    for t_idx, (block, block_id, depth, first_key) in enumerate(SDXL_TRANSFORMERS):
        for j in range(depth):
            (slot,) = [s for s in slots if (s.block, s.block_id, s.depth_index) == (block, block_id, j)]
            assert slot.checkpoint_key == first_key + 2 * j
            assert slot.transformer_index == t_idx


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="not an LDM cross-attention"):
        map_ldm_attn2(["down_blocks.0.attentions.0.transformer_blocks.0.attn2"])


def test_real_ldm_unet_maps_onto_an_adapter():
    """The tiny SD1-topology UNet from the WebUI's own ldm code fits a tiny SD1.5 adapter."""
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=48, legacy=False,
    )  # fmt: skip
    modules = dict(unet.named_modules())
    slots = map_ldm_attn2(n for n in modules if n.endswith("attn2"))
    widths = tuple(modules[s.name].to_q.in_features for s in slots)
    context = {modules[s.name].to_k.in_features for s in slots}
    assert widths == tiny_widths(SD15_WIDTHS, 10)
    assert context == {48}
    adapter = IPAdapterModel.from_tensors(adapter_tensors(adapter_shapes("base", 48, widths, 40)), "tiny.bin")
    check_unet(adapter.info, UNetSignature(48, widths))
    for slot, wk in zip(slots, adapter.to_k, strict=True):
        assert wk.shape[0] == modules[slot.name].to_q.out_features
    assert torch.is_tensor(adapter.to_k[0])
