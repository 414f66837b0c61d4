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


def tensor_names(path: Path) -> set[str]:
    """The tensor names in an adapter file, without torch (``install.py`` runs at every WebUI start):
    a safetensors header, or the strings of a zip-format pickle, read as data and never executed."""
    import json
    import pickletools
    import struct
    import zipfile

    if path.suffix.lower() == ".safetensors":
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            return set(json.loads(f.read(size)))
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        data = archive.read(name)
    return {arg for op, arg, _ in pickletools.genops(data) if "UNICODE" in op.name and isinstance(arg, str)}


def is_faceid(names: set[str]) -> bool:
    """FaceID, FaceID-Plus (v2) and Portrait, from key names: their LoRA keys, or the FaceID MLP
    (``proj.0``/``proj.2`` with a ``norm``, unlike full-face's ``proj.3``), with or without the
    Plus perceiver."""
    if any("_lora." in n for n in names):
        return True
    keys = {n.split("image_proj.", 1)[-1] for n in names}
    return {"proj.0.weight", "proj.2.weight", "norm.weight"} <= keys and "proj.3.weight" not in keys


def faceid_models(folders: Iterable[Path]) -> list[Path]:
    """The FaceID-family files in ``folders`` (``.safetensors`` and zip-format ``.bin``)."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".safetensors", ".bin"):
                continue
            try:
                names = tensor_names(path)
            except Exception:  # not an adapter, a legacy pickle, unreadable: the model list reports it
                continue
            if is_faceid(names):
                found.append(path)
    return found


def instantid_models(folders: Iterable[Path]) -> list[Path]:
    """InstantID files: named so (sd-webui-controlnet recognises its InstantID models by
    ``instant_id`` in the name), or a safetensors Resampler reading a 512-wide face embedding."""
    import json
    import struct

    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            suffix, stem = path.suffix.lower(), path.stem.lower().replace("-", "_")
            if suffix not in (".safetensors", ".bin", ".pth"):
                continue
            if "instant_id" in stem or "instantid" in stem:
                found.append(path)
                continue
            if suffix != ".safetensors":
                continue
            try:
                with path.open("rb") as f:
                    (size,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(size))
            except Exception:  # unreadable: the model list reports it
                continue
            proj_in = header.get("image_proj.proj_in.weight", {}).get("shape")
            if "image_proj.latents" in header and proj_in is not None and proj_in[-1] == 512:
                found.append(path)
    return found


def install_reason(models: Path, environ: dict) -> str | None:
    """Why onnxruntime should be installed now (``None``: it should not, or it is there).

    FaceID and InstantID models need it: in our units, and in ControlNet's face preprocessors,
    which this extension serves when insightface is missing."""
    if onnxruntime_present():
        return None
    if environ.get("IPADAPTER_FACEID") == "1":
        return "IPADAPTER_FACEID=1"
    folders = [models / "ipadapter", models / "ControlNet"]
    found = faceid_models(folders)
    if found:
        return f"FaceID model {found[0].name}"
    found = instantid_models(folders)
    return f"InstantID model {found[0].name}" if found else None


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
