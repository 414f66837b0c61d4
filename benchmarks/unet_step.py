"""Whole-step cost of the image term in a full-size SD1.5 UNet (random weights, real shapes).

Builds ``ldm``'s ``UNetModel`` with the SD1.5 configuration (860 M parameters, 16 cross-attention
layers, the host's stock ``CrossAttention``) and a random IP-Adapter Plus with the real SD1.5
shapes (resampler, 16 tokens, ViT-H hidden states [1, 257, 1280] in). The adapter's K/V are
projected once (one ``UnitKV`` per unit, as per generation in the WebUI); :class:`Attn2Hooks` is
installed on the UNet's ``attn2`` modules in ``map_ldm_attn2`` key order, and its provider returns
one ``ImageKV`` per unit and layer for a batch of 2 (row 0 cond, row 1 uncond).

One run prints the time of one UNet call (batch 2 = cond + uncond, 77 text tokens) for:

  none     no hooks installed (the host alone);
  1 unit   hooks with one unit (16 image tokens);
  3 units  hooks with three units (the same adapter, three different references).

The variants are interleaved (one step of each per round, order rotated every round) so that drift
in machine load affects them alike; median and min over the rounds are printed, and the ratios to
``none``. Before timing it checks once that weight 0 gives an output bit-identical to no hooks
(``torch.equal``) and that weight 1 changes it.

Linear and conv layers are re-initialised after construction: ``ldm`` zero-initialises every
transformer's ``proj_out``, which would hide the image term from the output entirely.

Run: python benchmarks/unet_step.py [--latent 32] [--repeat 4] [--dtype float32|bfloat16]
(defaults: 32×32 latent = 256 px; about 15 s per step and 4 minutes in all on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from ldm.modules import attention as ldm_attention
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.attend.layers import map_ldm_attn2
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors

BATCH, CTX, TEXT_TOKENS, IMAGE_TOKENS = 2, 768, 77, 16
ENCODER_TOKENS, ENCODER_WIDTH = 257, 1280  # ViT-H/14 penultimate hidden states
COND_ROWS = (True, False)  # row 0 cond, row 1 uncond


def build_unet(dtype: torch.dtype) -> UNetModel:
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=CTX,
        use_checkpoint=False,
        legacy=False,
    )
    for m in unet.modules():  # undo zero_module() on proj_out, out_layers and the final conv
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.reset_parameters()
    unet = unet.eval().to(dtype)
    if dtype != torch.float32:
        # ldm casts the input to ``self.dtype`` (fp32 or fp16 only) and feeds the fp32 timestep
        # embedding to ``time_embed``: make both follow the weights.
        unet.dtype = dtype
        unet.time_embed.register_forward_pre_hook(lambda _m, args: (args[0].to(dtype),))
        # Its CrossAttention upcasts q·kᵀ to fp32 and then fails on the bf16 V; run it in bf16.
        ldm_attention._ATTN_PRECISION = str(dtype)
        for m in unet.modules():  # GroupNorm32 normalises in fp32 and casts back; keep its affine fp32
            if isinstance(m, nn.GroupNorm):
                m.float()
    return unet


def build_units(count: int, dtype: torch.dtype, g: torch.Generator) -> list[UnitKV]:
    shapes = adapter_shapes("resampler", CTX, SD15_WIDTHS, ENCODER_WIDTH, tokens=IMAGE_TOKENS, inner=CTX)
    adapter = IPAdapterModel.from_tensors(adapter_tensors(shapes), "plus.bin")
    units = []
    for _ in range(count):
        cond, uncond = (
            adapter.project(EncodedImages(hidden=torch.randn(1, ENCODER_TOKENS, ENCODER_WIDTH, generator=g)))
            for _ in range(2)
        )
        units.append(UnitKV(adapter, cond, uncond, "cpu", dtype))
    return units


def attn2_modules(unet: nn.Module) -> list[nn.Module]:
    modules = dict(unet.named_modules())
    return [modules[slot.name] for slot in map_ldm_attn2(n for n in modules if n.endswith(".attn2"))]


class Provider:
    """Per layer, one ``ImageKV`` per unit with rows laid out as cond, uncond."""

    def __init__(self, units: list[UnitKV], weight: float) -> None:
        self.units, self.weight = units, weight

    def __call__(self, layer: int, q: torch.Tensor, context: torch.Tensor | None) -> list[ImageKV]:
        return [ImageKV(*unit.rows(layer, COND_ROWS), self.weight) for unit in self.units]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px, 64 = 512 px)")
    parser.add_argument("--repeat", type=int, default=4, help="interleaved rounds (one step per variant each)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)

    unet = build_unet(dtype)
    modules = attn2_modules(unet)
    units = build_units(3, dtype, g)
    for n, module in enumerate(modules):  # key order and widths agree with the adapter's layers
        assert units[0].kv[n][0].shape[-1] == module.to_q.out_features, (n, module.to_q.out_features)

    x = torch.randn(BATCH, 4, args.latent, args.latent, generator=g).to(dtype)
    timesteps = torch.full((BATCH,), 500, dtype=torch.long)
    context = torch.randn(BATCH, TEXT_TOKENS, CTX, generator=g).to(dtype)

    def step() -> torch.Tensor:
        return unet(x, timesteps=timesteps, context=context)

    variants = {
        "none": None,
        "1 unit": Attn2Hooks(modules, Provider(units[:1], 0.8)),
        "3 units": Attn2Hooks(modules, Provider(units, 0.8)),
    }
    print(f"SD1.5 UNet (860M, random weights), latent {args.latent}x{args.latent}, batch {BATCH}, "
          f"{TEXT_TOKENS} text tokens, {IMAGE_TOKENS} image tokens per unit, {args.dtype} on cpu, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)  # fmt: skip

    with torch.inference_mode():
        reference = step()  # also the warm-up of the unhooked model
        with Attn2Hooks(modules, Provider(units[:1], 0.0)):
            zero = step()
        with Attn2Hooks(modules, Provider(units[:1], 1.0)):
            one = step()
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules), "hooks left installed"
        print(f"weight 0 == no hooks (torch.equal): {torch.equal(zero, reference)}   "
              f"weight 1 differs: {not torch.equal(one, reference)} "
              f"(max |diff| {(one.float() - reference.float()).abs().max().item():.3g})", flush=True)  # fmt: skip

        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                hooks = variants[name]
                if hooks is not None:
                    hooks.install()
                try:
                    t0 = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - t0)
                finally:
                    if hooks is not None:
                        hooks.remove()

    med = {name: statistics.median(v) * 1000 for name, v in times.items()}
    low = {name: min(v) * 1000 for name, v in times.items()}
    for name in names:
        print(f"{name:8s} {med[name]:10.1f} ms/step median  {low[name]:10.1f} min  ({len(times[name])} steps)")
    for name in names[1:]:
        print(f"{name} / none = {med[name] / med['none']:.4f} (median)  {low[name] / low['none']:.4f} (min)")


if __name__ == "__main__":
    main()
