"""Per-step cost of the image term over SD1.5's 16 cross-attention layers at real widths.

Random weights, real shapes: widths 320/640/1280 with 8 heads, a 64×64 latent (512 px), batch 2
(cond + uncond), 77 text tokens and 16 image tokens. One run prints, per UNet step:

  (a) text attention alone (to_q/to_k/to_v, SDPA, to_out), as the host runs it;
  (b) (a) + our image term with K/V precomputed once per generation;
  (c) (a) + the image term with K/V recomputed every step (what diffusers and Forge do);
  (d) (a) + the image term as a separate pass that recomputes q and applies to_out's weight again
      (the usual wrapper design); ours reuses the host's q and adds before to_out;
  (e) (b) with a region mask (half the canvas), resampled once per layer and cached;
  (f) (b) with an attention map recorded on every layer (the cost of maps on; off is (b) itself:
      a term without a recorder takes the same path as before maps existed).

Run: python benchmarks/attention_layers.py [--latent 64] [--repeat 20] [--dtype float32]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipadapter_ext.core.attend.attention import ImageKV, add_image_attention
from ipadapter_ext.core.attend.attention_map import UnitMap
from ipadapter_ext.core.attend.masks import RegionMask

SD15_LAYERS = [  # (width, latent downscale) in execution order: input, middle, output
    (320, 1), (320, 1), (640, 2), (640, 2), (1280, 4), (1280, 4), (1280, 8),
    (1280, 4), (1280, 4), (1280, 4), (640, 2), (640, 2), (640, 2), (320, 1), (320, 1), (320, 1),
]  # fmt: skip
HEADS, CTX, TEXT_TOKENS, IMAGE_TOKENS = 8, 768, 77, 16


class Layer:
    def __init__(self, width: int, tokens: int, batch: int, dtype: torch.dtype, g: torch.Generator) -> None:
        def w(*shape):
            return (torch.randn(*shape, generator=g) / shape[-1] ** 0.5).to(dtype)

        self.heads = HEADS
        self.q, self.k, self.v, self.out = w(width, width), w(width, CTX), w(width, CTX), w(width, width)
        self.out_bias = w(width)
        self.k_ip, self.v_ip = w(width, CTX), w(width, CTX)
        self.x = torch.randn(batch, tokens, width, generator=g).to(dtype)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def text(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.linear(self.x, self.q)
        z = F.scaled_dot_product_attention(
            self.split(q), self.split(F.linear(context, self.k)), self.split(F.linear(context, self.v))
        )
        b, n, c = q.shape
        return q, z.transpose(1, 2).reshape(b, n, c)


def step_text(layers, context, image_kv, image_tokens):
    for layer in layers:
        _, z = layer.text(context)
        F.linear(z, layer.out, layer.out_bias)


def step_ours(layers, context, image_kv, image_tokens):
    for layer, (k, v) in zip(layers, image_kv, strict=True):
        q, z = layer.text(context)
        z = add_image_attention(z, q, HEADS, [ImageKV(k, v, 0.8)])
        F.linear(z, layer.out, layer.out_bias)


def step_recompute_kv(layers, context, image_kv, image_tokens):
    for layer in layers:
        q, z = layer.text(context)
        k, v = F.linear(image_tokens, layer.k_ip), F.linear(image_tokens, layer.v_ip)
        z = add_image_attention(z, q, HEADS, [ImageKV(k, v, 0.8)])
        F.linear(z, layer.out, layer.out_bias)


def step_separate_pass(layers, context, image_kv, image_tokens):
    for layer, (k, v) in zip(layers, image_kv, strict=True):
        _, z = layer.text(context)
        out = F.linear(z, layer.out, layer.out_bias)
        q = F.linear(layer.x, layer.q)  # q recomputed by the wrapper
        ip = add_image_attention(torch.zeros_like(z), q, HEADS, [ImageKV(k, v, 0.8)])
        out + F.linear(ip, layer.out)


def step_masked(layers, context, image_kv, image_tokens, region=None, hw=None):
    """b with a region mask, resampled per layer once and then read from its cache (as in a job)."""
    for layer, (k, v) in zip(layers, image_kv, strict=True):
        q, z = layer.text(context)
        mask = region.for_layer(q.shape[1], hw, q.device, q.dtype)
        z = add_image_attention(z, q, HEADS, [ImageKV(k, v, 0.8, mask=mask)])
        F.linear(z, layer.out, layer.out_bias)


def step_mapped(layers, context, image_kv, image_tokens, unit_map=None, hw=None):
    """b with an attention map: each term records its output for the cond row (row 1 is uncond),
    with the recorder bound per layer call as PreparedUnit.term binds it."""
    for layer, (k, v) in zip(layers, image_kv, strict=True):
        q, z = layer.text(context)
        record = functools.partial(unit_map.add, images=[0, None], latent_hw=hw)
        z = add_image_attention(z, q, HEADS, [ImageKV(k, v, 0.8, record=record)])
        F.linear(z, layer.out, layer.out_bias)


def measure(fn, args, repeat: int) -> float:
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512 px)")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    batch = 2
    layers = [Layer(w, (args.latent // s) ** 2, batch, dtype, g) for w, s in SD15_LAYERS]
    for layer in layers:
        for name in ("q", "k", "v", "out", "out_bias", "k_ip", "v_ip", "x"):
            setattr(layer, name, getattr(layer, name).to(args.device))
    context = torch.randn(batch, TEXT_TOKENS, CTX, generator=g).to(args.device, dtype)
    image_tokens = torch.randn(batch, IMAGE_TOKENS, CTX, generator=g).to(args.device, dtype)
    image_kv = [(F.linear(image_tokens, la.k_ip), F.linear(image_tokens, la.v_ip)) for la in layers]
    run_args = (layers, context, image_kv, image_tokens)
    half = torch.zeros(args.latent * 8, args.latent * 8)
    half[:, : args.latent * 4] = 1.0
    region, hw = RegionMask(half), (args.latent, args.latent)
    unit_map = UnitMap(hw)
    with torch.inference_mode():
        # Interleave the variants so that drift in machine load affects all of them alike.
        fns = {"a": step_text, "b": step_ours, "c": step_recompute_kv, "d": step_separate_pass,
               "e": lambda *a: step_masked(*a, region=region, hw=hw),
               "f": lambda *a: step_mapped(*a, unit_map=unit_map, hw=hw)}  # fmt: skip
        results = {name: [] for name in fns}
        for _ in range(3):
            for name, fn in fns.items():
                results[name].append(measure(fn, run_args, max(1, args.repeat // 3)))
    t = {name: min(v) * 1000 for name, v in results.items()}
    print(f"SD1.5 cross-attention, 16 layers, latent {args.latent}x{args.latent}, batch {batch}, "
          f"{IMAGE_TOKENS} image tokens, {args.dtype} on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"(a) text attention alone            {t['a']:9.2f} ms/step")
    print(f"(b) a + image term, K/V precomputed {t['b']:9.2f} ms/step")
    print(f"(c) a + image term, K/V every step  {t['c']:9.2f} ms/step")
    print(f"(d) a + separate pass (q, to_out)   {t['d']:9.2f} ms/step")
    print(f"(e) b with a region mask            {t['e']:9.2f} ms/step")
    print(f"(f) b with an attention map         {t['f']:9.2f} ms/step")
    print(f"b/a = {t['b'] / t['a']:.3f}   c/b = {t['c'] / t['b']:.3f}   d/b = {t['d'] / t['b']:.3f}   "
          f"e/b = {t['e'] / t['b']:.3f}   f/b = {t['f'] / t['b']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
