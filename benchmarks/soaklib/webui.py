"""``--webui-root``: start a WebUI from its folder for the soak, as the e2e suite does, with tiny
models of every kind written into it and removed afterwards.

Written before the start (so the first scan lists them): random adapters of every SD kind sized to
the checkpoint (base, plus, full-face, and with onnxruntime in the WebUI's venv FaceID,
FaceID-Plus v2 and Portrait with a tiny face pack), a tiny CLIP encoder, and a second checkpoint to
switch to: a copy of the first with one UNet tensor changed, so it gives other images and a
baseline after switching back shows whether the first one really came back. The helpers come from
``tests/e2e`` (this runs from a checkout of the repository).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = "soak-tiny-"
SECOND = "soak-second"


def _repo_on_path() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def write_second_checkpoint(source: Path, target: Path, tensor: str = "model.diffusion_model.out.2.bias") -> Path:
    """A copy of ``source`` with ``tensor`` shifted by 0.05: a different checkpoint of the same
    architecture, written without loading the others (the bytes are copied, one tensor patched)."""
    import numpy as np

    shutil.copyfile(source, target)
    with open(target, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        entry = header[tensor]
        dtype = {"F32": np.float32, "F16": np.float16, "BF16": None}[entry["dtype"]]
        start, end = (8 + size + offset for offset in entry["data_offsets"])
        f.seek(start)
        raw = f.read(end - start)
        if dtype is None:  # bfloat16: the upper half of a float32
            values = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32) + 0.05
            patched = (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            patched = (np.frombuffer(raw, dtype) + dtype(0.05)).astype(dtype).tobytes()
        f.seek(start)
        f.write(patched)
    config = source.with_suffix(".yaml")
    if config.is_file():  # A1111 reads a checkpoint's config from the .yaml beside it
        shutil.copyfile(config, target.with_suffix(".yaml"))
    return target


def has_onnxruntime(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import onnxruntime"], capture_output=True, timeout=120)
    return probe.returncode == 0


def write_models(root: Path, checkpoint: Path, faces: bool) -> list[Path]:
    """The tiny adapters, encoder and (``faces``) face pack; returns every path written."""
    _repo_on_path()
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.e2e.webui import checkpoint_attn2
    from tests.factories import adapter_shapes, adapter_tensors
    from tests.test_encoder import TINY, _save, _tiny_model

    ctx, widths = checkpoint_attn2(checkpoint)
    adapters, encoders = root / "models" / "ipadapter", root / "models" / "clip_vision"
    written: list[Path] = []
    for folder in (adapters, encoders):
        if not folder.exists():
            folder.mkdir(parents=True)
            written.append(folder)
    hidden, embeds = TINY["hidden_size"], TINY["projection_dim"]
    kinds = {
        "base.safetensors": adapter_shapes("base", ctx, widths, embeds),
        "plus.safetensors": adapter_shapes("resampler", ctx, widths, hidden, tokens=4, res_dim=32, inner=64),
        "full.bin": adapter_shapes("full", ctx, widths, hidden),
    }
    if faces:
        kinds["faceid.safetensors"] = adapter_shapes("faceid", ctx, widths, 0, lora_rank=4, tokens=4)
        kinds["faceid-plusv2.bin"] = adapter_shapes("faceid_plus", ctx, widths, hidden, lora_rank=4, tokens=4)
        kinds["portrait.safetensors"] = adapter_shapes("faceid", ctx, widths, 0, tokens=4)
    for seed, (name, shapes) in enumerate(kinds.items(), start=30):
        path = adapters / (PREFIX + name)
        save_adapter_tensors(adapter_tensors(shapes, seed=seed), path)
        written.append(path)
    encoder = encoders / (PREFIX + "clip.safetensors")
    _save(_tiny_model(seed=31), encoder)
    written.append(encoder)
    pack = root / "models" / "insightface"
    if faces and not pack.exists():
        from tests.face_onnx import write_pack

        write_pack(pack / "models" / "buffalo_l", with_landmark=False)
        written.append(pack)
    return written


@contextlib.contextmanager
def started(root: Path, checkpoint: Path | None = None) -> Iterator[tuple[str, int, Path, str]]:
    """(url, process id, console log, second checkpoint's name) of a WebUI started at ``root``
    with ``WEBUI_ARGS`` (e.g. ``--always-cpu`` on Forge without a GPU), stopped afterwards."""
    _repo_on_path()
    from tests.e2e.http_client import Client
    from tests.e2e.webui import WebUIProcess, find_checkpoint, link_extension

    root = root.expanduser().resolve()
    if checkpoint is not None:
        os.environ["WEBUI_CKPT"] = str(checkpoint)
    first = find_checkpoint(root)
    created: list[Path] = link_extension(root)  # the link, and extensions/ when the install had none
    log = Path(tempfile.mkdtemp(prefix="soak-webui-")) / "webui.log"
    server = WebUIProcess(root, log, first)
    try:
        second = write_second_checkpoint(first, first.with_name(f"{SECOND}{first.suffix}"))
        created += [second, second.with_suffix(".yaml")]
        created += write_models(root, first, faces=has_onnxruntime(server.python))
        server.start()
        assert server.proc is not None
        took = server.wait_ready(Client(server.url))
        print(f"WebUI ready at {server.url} in {took:.0f} s (log: {log})", file=sys.stderr)
        yield server.url, server.proc.pid, log, second.name
    finally:
        server.stop()
        for path in reversed(created):
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
