"""What FaceID needs beyond the WebUI: onnxruntime (the one extra package) and a face pack.

``install.py`` installs onnxruntime only when a FaceID model is in the model folders or the user
asks (``IPADAPTER_FACEID=1`` at launch, or ``python -m ipadapter_ext.face_setup``), so nothing
changes for users who never use FaceID. An ``onnxruntime-gpu`` the user already has is kept.

The install never moves a package the WebUI pinned: a plain ``pip install onnxruntime`` upgrades
Forge's ``protobuf==3.20.0`` (newer onnxruntime wheels declare ``protobuf>=4.25``) and can move
numpy, after which the WebUI reinstalls its requirements at the next start, or breaks. So pip
gets the installed versions of those packages as constraints and picks an onnxruntime that fits
them; where none fits, onnxruntime goes in without its dependencies (its inference sessions do not
import protobuf) and only its missing, unheld dependencies are added, under the same constraints.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
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


#: Packages the WebUI pins whose versions onnxruntime's requirements would otherwise move.
HELD = ("protobuf", "numpy")


def held_pins(version: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """``name==version`` for each :data:`HELD` package installed in this interpreter."""
    pins = []
    for name in HELD:
        try:
            pins.append(f"{name}=={version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def pip_install(python: str, packages: Sequence[str], constraints: Path, *options: str) -> list[str]:
    """The pip command installing ``packages`` into ``python``'s environment under ``constraints``."""
    return [python, "-m", "pip", "install", *options, "-c", str(constraints), *packages]


def unheld_requirements(requires: Iterable[str]) -> list[str]:
    """The names of a distribution's unconditional requirements, less the :data:`HELD` ones (they
    are installed already, at the WebUI's versions)."""
    names = []
    for line in requires:
        if ";" in line and "extra" in line.split(";", 1)[1]:
            continue
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if found and found.group(1).lower().replace("_", "-") not in HELD:
            names.append(found.group(1))
    return names


def install_onnxruntime(
    run: Callable[[list[str]], int] | None = None,
    python: str | None = None,
    version: Callable[[str], str] = importlib.metadata.version,
    requires: Callable[[str], list[str] | None] = importlib.metadata.requires,
) -> int:
    """Install onnxruntime into ``python``'s environment without moving protobuf or numpy; the
    exit code of the last pip run (0: installed). ``run`` runs one command (``subprocess.call``)."""
    run = run or subprocess.call
    python = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="ipadapter-pip-") as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text("".join(f"{pin}\n" for pin in held_pins(version)), encoding="utf-8")
        code = run(pip_install(python, [ONNXRUNTIME], constraints))
        if code == 0:
            return code
        print(
            "[IP-Adapter] no onnxruntime release fits the installed "
            + ", ".join(held_pins(version))
            + "; installing it without its dependencies"
        )
        code = run(pip_install(python, [ONNXRUNTIME], constraints, "--no-deps"))
        if code != 0:
            return code
        try:
            missing = unheld_requirements(requires(ONNXRUNTIME) or [])
        except importlib.metadata.PackageNotFoundError:
            missing = []
        return run(pip_install(python, missing, constraints)) if missing else 0


def main() -> int:
    if onnxruntime_present():
        print("[IP-Adapter] onnxruntime is installed; FaceID face analysis can run.")
        return 0
    print("[IP-Adapter] installing onnxruntime for FaceID face analysis …")
    return install_onnxruntime()


if __name__ == "__main__":
    raise SystemExit(main())
