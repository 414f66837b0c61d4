"""Per-step cost of one XLabs Flux IP-Adapter unit at full Flux.1 widths (random weights, real shapes).

A whole Flux.1 transformer (12 B parameters) does not fit a 2-core CPU's time budget, so this times
**one double-stream block** at full size (hidden 3072, 24 heads × 128, MLP 12288; the double of
Forge's ``backend/nn/flux.py`` block from tests/doubles/forge) on 4096 image tokens (1024 px) and
512 text tokens, batch 1:

  block        the block alone (Forge's code path, no patch);
  block+unit   the same block with our object patches on (QueryTap on ``img_attn.norm.forward``,
               FluxBlockPatch on ``forward``) and one unit of 4 image tokens (XLabs v1; ``--tokens
               16`` for v2), i.e. exactly what runs in Forge per double block and step;
  term         the image term alone (``add_flux_image_term``: one SDPA of the 4096 queries over
               the unit's tokens, the head merge and the add), from a captured query.

The unit's K/V are made once beforehand (per generation in the WebUI: 19 blocks × 2 Linear layers
of [tokens, 4096] × [4096, 3072], also timed and printed). Variants are interleaved, each round
rotating the order; medians are printed, with the ratios block+unit / block and term / block. A
step of the full model runs 19 double blocks *and* 38 single blocks, so the whole-step overhead is
at most 19·term / (19·block), the ratio printed, and about half of that in practice.

Before timing it checks that weight 0 is bit-identical to the unpatched block and weight 1 changes it.

Run: python benchmarks/flux_step.py [--img 4096] [--txt 512] [--tokens 4] [--repeat 3] [--threads N]
(defaults: about 1–2 minutes per round on a 2-core CPU in fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "doubles" / "forge"))  # the double's ``backend`` package

from backend.nn.flux import DoubleStreamBlock, EmbedND  # noqa: E402

from ipadapter_ext.core.attend.attention import ImageKV  # noqa: E402
from ipadapter_ext.core.attend.flux import add_flux_image_term  # noqa: E402
from ipadapter_ext.host.forge.flux import FluxBlockPatch, QueryTap, _Call, _Query  # noqa: E402

HIDDEN, HEADS, CTX = 3072, 24, 4096
AXES = (16, 56, 56)


class _Run:
    """Stands in for ForgeRun: always the one unit's term (rows and steps are bookkeeping only)."""

    def __init__(self, term: ImageKV) -> None:
        self.term, self.upcast = term, False

    def terms_for(self, layer, rows, tokens, device, extra):
        return [self.term]


def _pe(img: int, txt: int) -> torch.Tensor:
    side = int(img**0.5)
    ids = torch.zeros(1, txt + side * side, 3)
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)
    ids[0, txt:, 1:] = grid.float()
    return EmbedND(HIDDEN // HEADS, 10000, list(AXES))(ids)


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img", type=int, default=4096, help="image tokens (a square number): 4096 = 1024 px")
    ap.add_argument("--txt", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=4, help="adapter tokens per reference (v1: 4, v2: 16)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    block = DoubleStreamBlock(HIDDEN, HEADS, mlp_ratio=4.0, qkv_bias=True).eval()
    img, txt = torch.randn(1, args.img, HIDDEN), torch.randn(1, args.txt, HIDDEN)
    vec, pe = torch.randn(1, HIDDEN), _pe(args.img, args.txt)

    tokens = torch.randn(1, args.tokens, CTX)
    wk, wv = torch.randn(HIDDEN, CTX) / CTX**0.5, torch.randn(HIDDEN, CTX) / CTX**0.5
    start = time.perf_counter()
    for _ in range(19):  # once per generation: every double block's K/V
        k, v = torch.nn.functional.linear(tokens, wk), torch.nn.functional.linear(tokens, wv)
    kv_ms = 1000 * (time.perf_counter() - start)

    original_forward, original_norm = block.forward, block.img_attn.norm.forward
    slot, call = _Query(), _Call(extra={"cond_or_uncond": [0]})

    def patch(weight: float) -> None:
        block.img_attn.norm.forward = QueryTap(original_norm, slot)
        block.forward = FluxBlockPatch(0, original_forward, slot, call, _Run(ImageKV(k, v, weight)))

    def unpatch() -> None:
        block.forward, block.img_attn.norm.forward = original_forward, original_norm

    base_img, _ = block(img=img, txt=txt, vec=vec, pe=pe)
    patch(0.0)
    zero_img, _ = block(img=img, txt=txt, vec=vec, pe=pe)
    patch(1.0)
    one_img, _ = block(img=img, txt=txt, vec=vec, pe=pe)
    unpatch()
    assert torch.equal(zero_img, base_img), "weight 0 must be bit-identical to no adapter"
    assert not torch.equal(one_img, base_img), "weight 1 must change the block's output"
    tap = _Query()  # the block's own query, for timing the term alone
    block.img_attn.norm.forward = QueryTap(original_norm, tap)
    block(img=img, txt=txt, vec=vec, pe=pe)
    unpatch()
    q = tap.q

    def run_block() -> None:
        block(img=img, txt=txt, vec=vec, pe=pe)

    def run_patched() -> None:
        patch(1.0)
        try:
            block(img=img, txt=txt, vec=vec, pe=pe)
        finally:
            unpatch()

    def run_term() -> None:
        for _ in range(10):  # one term is short: time ten and divide
            add_flux_image_term(base_img, q, [ImageKV(k, v, 1.0)])

    variants = {"block": run_block, "block+unit": run_patched, "term": run_term}
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.repeat):
        for name in names[r % 3 :] + names[: r % 3]:
            t0 = time.perf_counter()
            variants[name]()
            elapsed = time.perf_counter() - t0
            times[name].append(elapsed / (10 if name == "term" else 1))
        print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{n} {1000 * times[n][-1]:.1f} ms" for n in names))

    block_ms, patched_ms, term_ms = (_median_ms(times[n]) for n in names)
    print(
        f"\nFlux double block, batch 1, {args.img} image + {args.txt} text tokens, hidden {HIDDEN} "
        f"({HEADS}×{HIDDEN // HEADS}), one unit of {args.tokens} tokens, {torch.get_num_threads()} threads, fp32"
    )
    print(f"K/V for 19 blocks (once per generation): {kv_ms:.1f} ms")
    print(f"block       {block_ms:10.1f} ms  (median of {args.repeat})")
    print(f"block+unit  {patched_ms:10.1f} ms  ratio {patched_ms / block_ms:.4f}")
    print(f"term alone  {term_ms:10.2f} ms  ratio to block {term_ms / block_ms:.4f}")
    print(
        f"per step, 19 double blocks: +{19 * term_ms:.1f} ms over {19 * block_ms:.0f} ms "
        f"(≤ {100 * term_ms / block_ms:.2f} %; the 38 single blocks only dilute it)"
    )


if __name__ == "__main__":
    main()
