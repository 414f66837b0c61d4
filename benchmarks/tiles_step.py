"""Per-step cost of a tiled unit (3 tiles) against a one-image unit, in a full-size SD1.5 UNet.

Tiles multiply the encoder calls (once per generation, cached), not the per-step work: the three
token groups go through one attention call per layer, stacked as extra heads, each with its own
softmax and its band of the output. This prints, from one run, the time of one UNet call
(batch 2 = cond + uncond, 77 text tokens) with

  1 image   one unit, one reference (16 tokens): the baseline;
  3 tiles   one unit, a 21:9 reference in 3 tiles (3 groups of 16 tokens, band masks);
  3 images  one unit, three references concatenated (48 tokens, one softmax), for comparison;

the variants interleaved (one step of each per round, order rotated every round), median and min
over the rounds, and the ratios to ``1 image``. Goal: 3 tiles / 1 image ≤ 1.01. On a CPU it also
prints the process's CPU time per step (all threads), which other processes' load disturbs far
less than the wall time on a shared machine. Last, the ``ip`` lines time the image-prompt path
alone (every layer's terms and their attention, replayed on one step's recorded queries, minimum
over ``--ip-rounds``) and divide the extra cost of the tiles by the fastest 1-image step: an
estimate that a loaded machine disturbs much less than the whole-step ratios.

The UNet, adapter shapes and hooks are those of ``unet_step.py`` (random weights, real shapes); the
terms are built by :class:`~ipadapter_ext.core.job.PreparedUnit`, as in a generation, so the band
masks come from the same code (resampled per layer once, then cached).

Run: python benchmarks/tiles_step.py [--latent 32] [--repeat 5] [--dtype float32|bfloat16]
(defaults: 32×32 latent = 256 px; about 15 s per step and 4 minutes on a 2-core CPU). On a GPU,
``--device cuda --latent 64`` (512 px) measures what users run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from unet_step import (
    BATCH,
    CTX,
    ENCODER_TOKENS,
    ENCODER_WIDTH,
    IMAGE_TOKENS,
    TEXT_TOKENS,
    attn2_modules,
    build_unet,
)

from ipadapter_ext.core.attend.attention import add_image_attention
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.encode.tiles import BandMasks, plan_tiles
from ipadapter_ext.core.job import PreparedUnit
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors

COND_ROWS = (True, False)


def build(dtype: torch.dtype, device: str, g: torch.Generator) -> dict[str, PreparedUnit]:
    shapes = adapter_shapes("resampler", CTX, SD15_WIDTHS, ENCODER_WIDTH, tokens=IMAGE_TOKENS, inner=CTX)
    adapter = IPAdapterModel.from_tensors(adapter_tensors(shapes), "plus.bin")

    def tokens(images: int) -> torch.Tensor:
        hidden = torch.randn(images, ENCODER_TOKENS, ENCODER_WIDTH, generator=g)
        return adapter.project(EncodedImages(hidden=hidden)).reshape(1, -1, CTX)

    one, three = tokens(1), tokens(3)
    uncond_one = tokens(1)
    uncond_three = uncond_one.repeat(1, 3, 1)
    tiling = plan_tiles(2100, 900)
    assert tiling.count == 3
    return {
        "1 image": PreparedUnit(1, adapter, UnitKV(adapter, one, uncond_one, device, dtype), 0.8),
        "3 tiles": PreparedUnit(
            1,
            adapter,
            UnitKV(adapter, three, uncond_three, device, dtype, groups=3),
            0.8,
            tiling=tiling,
            bands=BandMasks(tiling),
        ),
        "3 images": PreparedUnit(1, adapter, UnitKV(adapter, three, uncond_three, device, dtype), 0.8),
    }


class Provider:
    def __init__(self, unit: PreparedUnit, latent: int) -> None:
        self.unit, self.hw = unit, (latent, latent)

        self.calls: list[tuple[int, torch.Tensor]] | None = None  # (layer, q) of one step, when recording

    def __call__(self, layer: int, q: torch.Tensor, _context: torch.Tensor | None):
        if self.calls is not None:
            self.calls.append((layer, q))
        term = self.unit.term(layer, COND_ROWS, int(q.shape[1]), self.hw)
        return [] if term is None else [term]


def ip_path_ms(
    provider: Provider, calls: list[tuple[int, torch.Tensor]], heads: list[int], rounds: int, device: str
) -> float:
    """The image-prompt work of one step alone (every layer's terms + their attention, as the
    hook runs them), replayed on the step's recorded queries: min over ``rounds``. Short calls
    timed by their minimum are far less disturbed by other processes than whole steps. On a CPU
    the clock is the process's CPU time, as for the steps' ``cpu`` lines."""
    clock = time.process_time if device == "cpu" else time.perf_counter
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        for (layer, q), h in zip(calls, heads, strict=True):
            add_image_attention(torch.zeros_like(q), q, h, provider(layer, q, None), False)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px, 64 = 512 px)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (one step per variant each)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ip-rounds", type=int, default=20, help="replays of the image-prompt path alone")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), args.device
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    unet = build_unet(dtype).to(device)
    modules = attn2_modules(unet)
    units = build(dtype, device, g)
    x = torch.randn(BATCH, 4, args.latent, args.latent, generator=g).to(device, dtype)
    timesteps = torch.full((BATCH,), 500, dtype=torch.long, device=device)
    context = torch.randn(BATCH, TEXT_TOKENS, CTX, generator=g).to(device, dtype)

    def step() -> torch.Tensor:
        out = unet(x, timesteps=timesteps, context=context)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    providers = {name: Provider(unit, args.latent) for name, unit in units.items()}
    hooks = {name: Attn2Hooks(modules, provider) for name, provider in providers.items()}
    print(f"SD1.5 UNet (860M, random weights), latent {args.latent}x{args.latent}, batch {BATCH}, "
          f"{TEXT_TOKENS} text tokens, {IMAGE_TOKENS} image tokens per image or tile, {args.dtype} on {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)  # fmt: skip
    names = list(hooks)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        outs = {}
        for name in names:  # warm-up, and the band masks' per-layer grids; records the queries
            providers[name].calls = []
            with hooks[name]:
                outs[name] = step()
            calls, providers[name].calls = providers[name].calls, None
        print(f"3 tiles differ from 3 images: {not torch.equal(outs['3 tiles'], outs['3 images'])}", flush=True)
        for r in range(args.repeat):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                with hooks[name]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    step()
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        heads = [modules[layer].heads for layer, _ in calls]
        ip = {name: ip_path_ms(providers[name], calls, heads, args.ip_rounds, device) for name in names}
    for name in names:
        print(f"ip   {name:8s} {ip[name]:10.1f} ms/step, the image-prompt path alone (min of {args.ip_rounds})")
    for name in names[1:]:
        extra = ip[name] - ip["1 image"]
        step_min = min((cpu if device == "cpu" else times)["1 image"]) * 1000
        print(f"ip   {name}: {extra:+.1f} ms/step over 1 image = {extra / step_min:+.2%} of the fastest 1-image step "
              f"(estimated ratio {1 + extra / step_min:.4f})")  # fmt: skip
    for label, series in (("wall", times), ("cpu", cpu) if device == "cpu" else ("", {})):
        if not series:
            continue
        med = {name: statistics.median(v) * 1000 for name, v in series.items()}
        low = {name: min(v) * 1000 for name, v in series.items()}
        for name in names:
            print(
                f"{label:4s} {name:8s} {med[name]:10.1f} ms/step median  {low[name]:10.1f} min  ({len(series[name])} steps)"
            )
        for name in names[1:]:
            print(f"{label:4s} {name} / 1 image = {med[name] / med['1 image']:.4f} (median)  "
                  f"{low[name] / low['1 image']:.4f} (min)")  # fmt: skip


if __name__ == "__main__":
    main()
