"""What FaceID needs beyond the WebUI: onnxruntime (the one extra package) and a face pack.

``install.py`` installs onnxruntime only when a FaceID model is in the model folders or the user
asks (``IPADAPTER_FACEID=1`` at launch, or ``python -m ipadapter_ext.face_setup``), so nothing
changes for users who never use FaceID. An ``onnxruntime-gpu`` the user already has is kept.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ONNXRUNTIME = "onnxruntime"
#: The pack's two files and where they go, for messages.
PACK_FILES = ("det_10g.onnx", "w600k_r50.onnx")


def onnxruntime_present() -> bool:
    """Any onnxruntime build (CPU, GPU, DirectML…) provides the ``onnxruntime`` module."""
    return importlib.util.find_spec("onnxruntime") is not None


def faceid_models(folders: Iterable[Path]) -> list[Path]:
    """The FaceID-family files in ``folders``, recognised from their tensors (headers only)."""
    from .core.load.detect import EncoderOutput, detect_adapter
    from .core.load.formats import MODEL_SUFFIXES, read_shapes

    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in MODEL_SUFFIXES:
                continue
            try:
                info = detect_adapter(read_shapes(path))
            except Exception:  # not an adapter, or unreadable: the model list reports it
                continue
            if info.encoder.output in (EncoderOutput.FACE, EncoderOutput.FACE_AND_PENULTIMATE):
                found.append(path)
    return found


def install_reason(models: Path, environ: dict) -> str | None:
    """Why onnxruntime should be installed now (``None``: it should not, or it is there)."""
    if onnxruntime_present():
        return None
    if environ.get("IPADAPTER_FACEID") == "1":
        return "IPADAPTER_FACEID=1"
    found = faceid_models([models / "ipadapter", models / "ControlNet"])
    return f"FaceID model {found[0].name}" if found else None


def install_onnxruntime() -> int:
    """``pip install onnxruntime`` into this interpreter; the exit code."""
    return subprocess.call([sys.executable, "-m", "pip", "install", ONNXRUNTIME])


def main() -> int:
    if onnxruntime_present():
        print("[IP-Adapter] onnxruntime is installed; FaceID face analysis can run.")
        return 0
    print("[IP-Adapter] installing onnxruntime for FaceID face analysis …")
    return install_onnxruntime()


if __name__ == "__main__":
    raise SystemExit(main())
