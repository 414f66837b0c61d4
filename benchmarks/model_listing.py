"""What listing a pickled encoder costs: reading its tensor shapes (what the model lists need)
against loading the whole file, in time and peak memory.

A transformers-format CLIP vision file is written as a zip-format ``.pth`` (the format torch has
written since 1.6) with ViT-H/14-like tensors, ~1.2 GB by default, then each way of reading it runs
in a fresh process so that its peak resident memory (``VmHWM``, Linux) is its own:

  (a) ``read_flat_tensors``: every tensor read into memory (what listing did before);
  (b) ``read_shapes``: the file memory-mapped, only the pickle read (what listing does now).

Run: python benchmarks/model_listing.py [--gigabytes 1.2] [--folder /tmp]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from ipadapter_ext.core.load.formats import read_flat_tensors, read_shapes
start = time.perf_counter()
result = {how}({path!r})
took = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"seconds": took, "tensors": len(result) if hasattr(result, "__len__") else 0,
                   "peak_mib": int(hwm.split()[1]) / 1024}}))
"""


def write_encoder(path: Path, gigabytes: float) -> None:
    """ViT-H/14-shaped layers (width 1280, MLP 5120) until the file reaches the size asked for."""
    per_layer = 4 * (4 * 1280 * 1280 + 2 * 1280 * 5120)
    layers = max(1, round(gigabytes * 1e9 / per_layer))
    tensors = {"vision_model.embeddings.patch_embedding.weight": torch.randn(1280, 3, 14, 14)}
    for i in range(layers):
        prefix = f"vision_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors[prefix + f"self_attn.{name}.weight"] = torch.randn(1280, 1280)
        tensors[prefix + "mlp.fc1.weight"] = torch.randn(5120, 1280)
        tensors[prefix + "mlp.fc2.weight"] = torch.randn(1280, 5120)
    torch.save(tensors, path)


def measure(how: str, path: Path) -> dict:
    code = CHILD.format(repo=str(REPO), how=how, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.2)
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        path = Path(tmp) / "clip_vision_big.pth"
        write_encoder(path, args.gigabytes)
        size_mib = path.stat().st_size / 2**20
        baseline = measure("(lambda p: 0)", path)  # the interpreter and torch alone
        full = measure("read_flat_tensors", path)
        shapes = measure("read_shapes", path)
    print(f"file: {size_mib:.0f} MiB, {full['tensors']} tensors; interpreter + torch alone: "
          f"{baseline['peak_mib']:.0f} MiB peak")  # fmt: skip
    print(f"{'':32} {'seconds':>8} {'peak MiB':>9} {'above baseline':>15}")
    for label, r in (("(a) read every tensor", full), ("(b) read shapes (memory-mapped)", shapes)):
        print(f"{label:32} {r['seconds']:8.3f} {r['peak_mib']:9.0f} {r['peak_mib'] - baseline['peak_mib']:15.0f}")
    extra_a = full["peak_mib"] - baseline["peak_mib"]
    extra_b = max(shapes["peak_mib"] - baseline["peak_mib"], 1.0)
    print(f"a/b time: {full['seconds'] / shapes['seconds']:.1f}×, a/b memory above baseline: {extra_a / extra_b:.0f}×")


if __name__ == "__main__":
    main()
