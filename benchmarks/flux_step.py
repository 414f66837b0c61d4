"""Per-step cost of the Flux units at full Flux.1 widths (random weights, real shapes): XLabs and
InstantX IP-Adapters, and Flux Redux's context tokens.

A whole Flux.1 transformer (12 B parameters) does not fit a 2-core CPU's time budget, so this times
**one double-stream and one single-stream block** at full size (hidden 3072, 24 heads × 128, MLP
12288; the doubles of Forge's ``backend/nn/flux.py`` blocks from tests/doubles/forge) on 4096 image
tokens (1024 px) and 512 text tokens, batch 1, each with and without a unit, in one run:

  double / single            the block alone (Forge's code path, no patch);
  double+XLabs               our patches on (query tap, block patch) and one XLabs unit (4 tokens);
  double+InstantX / single+InstantX
                             our patches on (query tap, projection tap) and one InstantX unit (128);
  double/single +729 ctx     the same blocks with Redux's 729 tokens appended to the text (what
                             attention and the text stream over them cost); +81 ctx: downsampled ÷3;
  … +729 ctx, bias           with the additive attention bias (strength as a bias, or a region
                             mask), through the same scoped attention function as in Forge.

Once per generation (timed once): the K/V of every block (XLabs: 19 × 2 Linear layers of
[4, 4096] × [4096, 3072]; InstantX: 57 × 2 of [128, 4096] × [4096, 3072] and the key norm), Redux's
two Linear layers over 729 SigLIP tokens, and, with transformers ≥ 4.37 (``--siglip``), SigLIP
so400m encoding one 384 px reference (then a cache hit: the encoder runs once per reference).

Variants are interleaved, each round rotating the order; medians are printed, with ratios to the
plain block. A step of the full model runs 19 double and 38 single blocks; the per-step figures
combine the measured blocks that way. Whole blocks take long on a CPU, so their differences drown
in a loaded machine's noise; the same run therefore also times the added work alone, repeated
(``--parts``, default 10 each): each unit's term on a block's query (XLabs and InstantX in a double
block, InstantX in a single block), and the joint attention of a block with and without Redux's
729 (or 81) tokens, with and without the bias: what attention over the tokens costs. Before timing, weight 0 is checked to be bit-identical to the
plain block and weight 1 to change it, for both IP-Adapters.

Run: python benchmarks/flux_step.py [--img 4096] [--txt 512] [--repeat 3] [--threads N] [--siglip]
(fp32; several minutes per round on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "doubles" / "forge"))  # the double's ``backend`` package

import backend.nn.flux as flux_module  # noqa: E402
from backend.nn.flux import DoubleStreamBlock, EmbedND, SingleStreamBlock  # noqa: E402

from ipadapter_ext.core.attend.attention import ImageKV  # noqa: E402
from ipadapter_ext.core.attend.flux import rms_norm_heads  # noqa: E402
from ipadapter_ext.host.forge.flux import AttentionTap, FluxBlockPatch, FluxRun, QueryTap, _Call, _Query  # noqa: E402
from ipadapter_ext.host.forge.flux_context import biased_attention  # noqa: E402

HIDDEN, HEADS, CTX, DOUBLE, SINGLE = 3072, 24, 4096, 19, 38
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


def _kv(tokens: int, blocks: int, key_norm: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(ms for every block's K/V, one block's K and V)."""
    x = torch.randn(1, tokens, CTX)
    wk, wv = torch.randn(HIDDEN, CTX) / CTX**0.5, torch.randn(HIDDEN, CTX) / CTX**0.5
    start = time.perf_counter()
    for _ in range(blocks):
        k, v = torch.nn.functional.linear(x, wk), torch.nn.functional.linear(x, wv)
        if key_norm:
            k = rms_norm_heads(k, HIDDEN // HEADS)
    return 1000 * (time.perf_counter() - start), k, v


class Blocks:
    """A full-size double and single block with inputs, and our patches put on and taken off."""

    def __init__(self, img: int, txt: int) -> None:
        torch.manual_seed(0)
        self.double = DoubleStreamBlock(HIDDEN, HEADS, mlp_ratio=4.0, qkv_bias=True).eval()
        self.single = SingleStreamBlock(HIDDEN, HEADS, mlp_ratio=4.0).eval()
        self.img_n, self.txt_n = img, txt
        self.img, self.vec = torch.randn(1, img, HIDDEN), torch.randn(1, HIDDEN)
        self.txt_full = torch.randn(1, txt + 729, HIDDEN)
        self.pes = {extra: _pe(img, txt + extra) for extra in (0, 81, 729)}

    def run_double(self, extra: int = 0) -> torch.Tensor:
        txt = self.txt_full[:, : self.txt_n + extra]
        return self.double(img=self.img, txt=txt, vec=self.vec, pe=self.pes[extra])[0]

    def run_single(self, extra: int = 0) -> torch.Tensor:
        x = torch.cat((self.txt_full[:, : self.txt_n + extra], self.img), dim=1)
        return self.single(x, vec=self.vec, pe=self.pes[extra])

    def patched(self, kind: str, term: ImageKV, block: str) -> Callable[[], None]:
        """Put our patches for ``kind`` on ``block``; returns the undo."""
        side = 2 * int(self.img_n**0.5)  # the latent: 2×2 patches per image token
        run = FluxRun(call=_Call(extra={"cond_or_uncond": [0], "original_shape": [1, 16, side, side]}))
        setattr(run, "xlabs" if kind == "xlabs" else "instantx", _Run(term))
        slot = _Query()
        if block == "double":
            b = self.double
            saved = (b.forward, b.img_attn.norm.forward, b.img_attn.proj.forward)
            b.img_attn.norm.forward = QueryTap(saved[1], saved[1], run, slot)
            if kind == "xlabs":
                b.forward = FluxBlockPatch(0, saved[0], saved[0], run, slot)
            else:
                b.img_attn.proj.forward = AttentionTap(0, saved[2], saved[2], run, slot, single=False)

            def undo() -> None:
                b.forward, b.img_attn.norm.forward, b.img_attn.proj.forward = saved

            return undo
        s = self.single
        saved_s = (s.norm.forward, s.linear2.forward)
        s.norm.forward = QueryTap(saved_s[0], saved_s[0], run, slot)
        s.linear2.forward = AttentionTap(DOUBLE, saved_s[1], saved_s[1], run, slot, single=True)

        def undo_single() -> None:
            s.norm.forward, s.linear2.forward = saved_s

        return undo_single


def _bias(length: int, tokens: int, txt: int) -> torch.Tensor:
    bias = torch.zeros(1, 1, length, length)
    bias[..., txt : txt + tokens] = -0.7  # log(0.5) on the Redux columns
    return bias


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def _parts(blocks: Blocks, k_x, v_x, k_i, v_i, repeat: int, txt: int, img: int) -> dict[str, float]:
    """Median ms of the added work alone: the terms on a captured query, and the joint attention."""
    from ipadapter_ext.core.attend.flux import add_flux_image_term, add_to_attention, single_stream_terms

    heads, d = HEADS, HIDDEN // HEADS
    q_img = torch.randn(1, heads, img, d)
    q_all = torch.randn(1, heads, txt + img, d)
    attn_img, attn_all = torch.randn(1, img, HIDDEN), torch.randn(1, txt + img, HIDDEN + 4 * HIDDEN)
    base = torch.randn(1, img, HIDDEN)
    x = ImageKV(k_x, v_x, 1.0)
    ix = ImageKV(k_i, v_i, 1.0)
    ns = flux_module.attention.__globals__
    attention_function = ns["attention_function"]

    def joint(extra: int, bias: bool) -> Callable[[], object]:
        length = txt + extra + img
        q, k, v = (torch.randn(1, heads, length, d) for _ in range(3))
        mask = _bias(length, extra, txt) if bias else None

        def run() -> object:
            if mask is None:
                return attention_function(q, k, v, heads, skip_reshape=True)
            with biased_attention(ns, mask):
                return ns["attention_function"](q, k, v, heads, skip_reshape=True)

        return run

    work: dict[str, Callable[[], object]] = {
        "XLabs term (double)": lambda: add_flux_image_term(base, q_img, [x]),
        "InstantX term (double)": lambda: add_to_attention(attn_img, q_img, [ix]),
        "InstantX term (single)": lambda: add_to_attention(attn_all, q_all, single_stream_terms([ix], txt)),
        "attention, text + image": joint(0, False),
        "attention, +81 Redux": joint(81, False),
        "attention, +729 Redux": joint(729, False),
        "attention, +729 Redux, bias": joint(729, True),
    }
    names = list(work)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            work[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: _median_ms(times[n]) for n in names}


def _check(blocks: Blocks, k_x, v_x, k_i, v_i) -> None:
    """Weight 0 is the plain block, bit for bit; weight 1 changes it."""
    base_d, base_s = blocks.run_double(), blocks.run_single()
    for kind, (k, v), block, base in (
        ("xlabs", (k_x, v_x), "double", base_d),
        ("instantx", (k_i, v_i), "double", base_d),
        ("instantx", (k_i, v_i), "single", base_s),
    ):
        for weight in (0.0, 1.0):
            undo = blocks.patched(kind, ImageKV(k, v, weight), block)
            try:
                out = blocks.run_double() if block == "double" else blocks.run_single()
            finally:
                undo()
            same = torch.equal(out, base)
            assert same == (weight == 0), (
                f"{kind} on the {block} block at weight {weight}: {'no' if same else 'a'} change"
            )


def _siglip(repeat: int) -> tuple[float, float] | None:
    """(ms to encode one 384 px reference with SigLIP so400m, ms for the cache hit), or None."""
    try:
        from transformers import SiglipVisionModel  # noqa: F401
    except ImportError:
        return None
    import tempfile

    import numpy as np
    from PIL import Image

    from ipadapter_ext.core.encode.cache import EmbeddingCache
    from ipadapter_ext.core.encode.encoder import load_encoder
    from ipadapter_ext.core.encode.references import encode_references
    from tests.siglip_env import save_siglip

    with tempfile.TemporaryDirectory() as tmp:
        path = save_siglip(Path(tmp) / "siglip.safetensors", hidden=1152, layers=27, intermediate=4304, image=384)
        encoder = load_encoder(path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    times = []
    for _ in range(repeat):
        cache = EmbeddingCache(4)
        t0 = time.perf_counter()
        encode_references(encoder, [image], "squash", cache)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    encode_references(encoder, [image], "squash", cache)
    return _median_ms(times), 1000 * (time.perf_counter() - t0)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img", type=int, default=4096, help="image tokens (a square number): 4096 = 1024 px")
    ap.add_argument("--txt", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--siglip", action="store_true", help="also time SigLIP so400m (transformers >= 4.37)")
    ap.add_argument("--parts", type=int, default=10, help="repeats of each part timed alone")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    xlabs_kv_ms, k_x, v_x = _kv(4, DOUBLE, key_norm=False)
    instantx_kv_ms, k_i, v_i = _kv(128, DOUBLE + SINGLE, key_norm=True)
    up, down = torch.randn(3 * CTX, 1152) / 1152**0.5, torch.randn(CTX, 3 * CTX) / (3 * CTX) ** 0.5
    t0 = time.perf_counter()
    torch.nn.functional.linear(
        torch.nn.functional.silu(torch.nn.functional.linear(torch.randn(1, 729, 1152), up)), down
    )
    redux_ms = 1000 * (time.perf_counter() - t0)

    blocks = Blocks(args.img, args.txt)
    _check(blocks, k_x, v_x, k_i, v_i)
    parts = _parts(blocks, k_x, v_x, k_i, v_i, args.parts, args.txt, args.img)
    print(f"parts alone, median of {args.parts}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in parts.items()), flush=True)
    namespace = flux_module.attention.__globals__
    length = args.txt + 729 + args.img

    def with_patch(kind: str, k, v, block: str) -> Callable[[], None]:
        def run() -> None:
            undo = blocks.patched(kind, ImageKV(k, v, 1.0), block)
            try:
                blocks.run_double() if block == "double" else blocks.run_single()
            finally:
                undo()

        return run

    def biased(block: str) -> Callable[[], None]:
        def run() -> None:
            with biased_attention(namespace, _bias(length, 729, args.txt)):
                blocks.run_double(729) if block == "double" else blocks.run_single(729)

        return run

    variants: dict[str, Callable[[], object]] = {
        "double": blocks.run_double,
        "double+XLabs": with_patch("xlabs", k_x, v_x, "double"),
        "double+InstantX": with_patch("instantx", k_i, v_i, "double"),
        "double +729 ctx": lambda: blocks.run_double(729),
        "double +81 ctx": lambda: blocks.run_double(81),
        "double +729 ctx, bias": biased("double"),
        "single": blocks.run_single,
        "single+InstantX": with_patch("instantx", k_i, v_i, "single"),
        "single +729 ctx": lambda: blocks.run_single(729),
        "single +81 ctx": lambda: blocks.run_single(81),
        "single +729 ctx, bias": biased("single"),
    }
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
        print(
            f"round {r + 1}/{args.repeat}: " + ", ".join(f"{n} {1000 * times[n][-1]:.0f} ms" for n in names), flush=True
        )
    ms = {n: _median_ms(times[n]) for n in names}

    print(
        f"\nFlux blocks, batch 1, {args.img} image + {args.txt} text tokens, hidden {HIDDEN} ({HEADS}×{HIDDEN // HEADS}), "
        f"{torch.get_num_threads()} threads, fp32, median of {args.repeat}"
    )
    print(f"{'variant':24} {'ms':>10}  ratio to the plain block")
    for n in names:
        plain = ms["double"] if n.startswith("double") else ms["single"]
        print(f"{n:24} {ms[n]:10.0f}  {ms[n] / plain:.4f}")
    step = DOUBLE * ms["double"] + SINGLE * ms["single"]

    def per_step(label: str, d: float, s: float) -> None:
        extra = DOUBLE * d + SINGLE * s
        print(f"{label:44} {extra:+10.0f} ms  ({100 * extra / step:+.2f} % of a step)")

    print(f"\nper step of Flux.1 (19 double + 38 single blocks ≈ {step:.0f} ms here):")
    per_step("XLabs unit (double blocks)", ms["double+XLabs"] - ms["double"], 0.0)
    per_step("InstantX unit (every block)", ms["double+InstantX"] - ms["double"], ms["single+InstantX"] - ms["single"])
    per_step("Redux, 729 context tokens", ms["double +729 ctx"] - ms["double"], ms["single +729 ctx"] - ms["single"])
    per_step(
        "Redux, 81 tokens (downsampling 3)", ms["double +81 ctx"] - ms["double"], ms["single +81 ctx"] - ms["single"]
    )
    per_step(
        "Redux, 729 tokens with the attention bias",
        ms["double +729 ctx, bias"] - ms["double"],
        ms["single +729 ctx, bias"] - ms["single"],
    )
    plain = parts["attention, text + image"]
    print(f"\nthe added work alone (median of {args.parts}), and per step of Flux.1:")
    print(
        f"  XLabs term, one double block            {parts['XLabs term (double)']:8.1f} ms  ×19 = {19 * parts['XLabs term (double)']:8.0f} ms"
    )
    ix_step = DOUBLE * parts["InstantX term (double)"] + SINGLE * parts["InstantX term (single)"]
    print(
        f"  InstantX term, double / single block    {parts['InstantX term (double)']:8.1f} / {parts['InstantX term (single)']:.1f} ms  ×(19, 38) = {ix_step:8.0f} ms"
    )
    for label in ("attention, +81 Redux", "attention, +729 Redux", "attention, +729 Redux, bias"):
        extra = parts[label] - plain
        print(f"  {label:38} {parts[label]:8.1f} ms  (+{extra:.1f} over {plain:.1f}; ×57 = {57 * extra:+8.0f} ms)")
    print("\nonce per generation:")
    print(f"  XLabs K/V, 19 blocks × 4 tokens            {xlabs_kv_ms:8.1f} ms")
    print(f"  InstantX K/V + key norm, 57 blocks × 128   {instantx_kv_ms:8.1f} ms")
    print(f"  Redux tokens (redux_up/down on 729)        {redux_ms:8.1f} ms")
    if args.siglip:
        timed = _siglip(args.repeat)
        if timed is None:
            print("  SigLIP so400m: skipped (transformers < 4.37 has no SiglipVisionModel)")
        else:
            print(f"  SigLIP so400m, one 384 px reference       {timed[0]:8.1f} ms (cache hit: {timed[1]:.2f} ms)")


if __name__ == "__main__":
    main()
