"""Model files the session writes into a WebUI install besides the tiny adapter and encoder.

Written in ``WEBUI_ROOT`` mode only, after :func:`~tests.e2e.webui.write_tiny_models` and before
the server starts (so its first scan lists them), and removed with the rest afterwards:

* a ``.bin`` twin of the tiny adapter: the same tensors in torch's pickle format, saved by the test
  environment's torch, so the file carries the ``.format_version`` entry current torch writes (and
  A1111's 2023 allow-list in ``modules/safe.py`` would call "malicious"); see test_webui_files.py;
* the tiny SDXL of :mod:`tests.e2e.sdxl` (``WEBUI_E2E_SDXL``; on by default for A1111), or on the
  Forge families an adapter for a full-size SDXL checkpoint found in the install; see
  test_webui_sdxl.py;
* the probe extension of :mod:`tests.e2e.probe` (where the host keeps the model); see
  test_webui_memory.py;
* refiner twins: the session's checkpoint (and the tiny SDXL, with its yaml) again under another
  name, as symbolic links, so a request can name them as its refiner and the host switches models
  mid-sampling (same weights: what is tested is the switch); see test_webui_refiner.py;
* with a Flux checkpoint, a second extension patching Flux's blocks (:mod:`tests.e2e.second_script`,
  two copies: one loads before this extension, one after), for test_webui_flux.py;
* on Forge, an InstantID-shaped IP-Adapter in ``models/ControlNet`` for
  test_webui_face_preprocessors.py: Forge's ControlNet lists its models once, at start, and builds
  InstantID's Resampler at its full size (1280 wide, 20 heads), so only a file of that size loads
  (about 160 MB in fp16; SD checkpoints only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import sdxl, second_script
from .probe import write_probe
from .webui import ADAPTER_FILE, find_checkpoint, is_flux_checkpoint

BIN_TWIN_FILE = "e2e-tiny-plus-twin.bin"
REFINER_TWIN_FILE = "e2e-refiner-twin.safetensors"
SDXL_REFINER_TWIN_FILE = "e2e-tiny-sdxl-twin.safetensors"
FORGE_INSTANTID_FILE = "e2e-tiny-instant_id.safetensors"


@dataclass
class ExtraModels:
    """What :func:`write_extra_models` wrote."""

    bin_twin: Path | None = None  # the .bin twin of ADAPTER_FILE
    sdxl: sdxl.SdxlFiles | None = None
    sdxl_skipped: str = ""  # why there is no tiny SDXL, when there is none
    probe: Path | None = None  # the probe extension's script (tests/e2e/probe.py)
    refiner_twin: Path | None = None  # the session's checkpoint under another name
    sdxl_refiner_twin: Path | None = None  # the tiny SDXL under another name


def write_bin_twin(adapter: Path, name: str = BIN_TWIN_FILE) -> Path:
    """``adapter``'s tensors re-saved beside it as a ``.bin`` (the nested image_proj/ip_adapter
    layout) by this environment's ``torch.save``."""
    from ipadapter_ext.core.load.formats import load_adapter_tensors, save_adapter_tensors

    twin = adapter.with_name(name)
    tmp = twin.with_name(twin.name + ".part.bin")
    save_adapter_tensors(load_adapter_tensors(adapter), tmp)
    os.replace(tmp, twin)
    return twin


def write_extra_models(root: Path, python: str, created: list[Path], checkpoint: Path) -> ExtraModels:
    """Write the extra files into the install at ``root`` (interpreter ``python``, started with
    ``checkpoint``), appending every path to ``created`` as it appears."""
    extras = ExtraModels()
    extras.bin_twin = write_bin_twin(root / "models" / "ipadapter" / ADAPTER_FILE)
    created.append(extras.bin_twin)
    kind, extras.sdxl_skipped = sdxl.wanted(root)
    if kind == "tiny":
        extras.sdxl = sdxl.write_tiny_sdxl(root, python, created)
    elif kind == "full":
        extras.sdxl = sdxl.write_full_sdxl_adapter(root, created)
    extras.probe = write_probe(root, created)
    folder = root / "models" / "Stable-diffusion"
    extras.refiner_twin = link_twin(checkpoint, folder / REFINER_TWIN_FILE, created)
    if kind == "tiny" and extras.sdxl is not None:
        tiny = folder / extras.sdxl.checkpoint
        extras.sdxl_refiner_twin = link_twin(tiny, folder / SDXL_REFINER_TWIN_FILE, created)
    if is_flux_checkpoint(find_checkpoint(root)):
        second_script.install(root, python, created)
    if (root / "modules_forge").is_dir():
        write_forge_instantid(root, created)
    return extras


def link_twin(checkpoint: Path, twin: Path, created: list[Path]) -> Path:
    """``checkpoint`` again as ``twin`` (a symbolic link), with a copy of the ``.yaml`` beside it
    when it has one (A1111 builds the model from it)."""
    if twin.is_symlink() or twin.exists():
        twin.unlink()
    twin.symlink_to(checkpoint.resolve())
    created.append(twin)
    config = checkpoint.with_suffix(".yaml")
    if config.is_file():
        twin_config = twin.with_suffix(".yaml")
        twin_config.write_text(config.read_text())
        created.append(twin_config)
    return twin


def write_forge_instantid(root: Path, created: list[Path]) -> Path | None:
    """The InstantID-shaped adapter (see the module docstring), sized to the checkpoint's layers."""
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.factories import adapter_shapes, adapter_tensors

    from .webui import checkpoint_attn2, find_checkpoint, is_flux_checkpoint

    checkpoint = find_checkpoint(root)
    if is_flux_checkpoint(checkpoint):
        return None
    ctx, widths = checkpoint_attn2(checkpoint)
    shapes = adapter_shapes("resampler", ctx, widths, 512, tokens=16, res_dim=1280, inner=1280)
    tensors = adapter_tensors(shapes, seed=32)
    tensors.image_proj.update({k: v.half() for k, v in tensors.image_proj.items()})
    path = root / "models" / "ControlNet" / FORGE_INSTANTID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.safetensors")
    save_adapter_tensors(tensors, tmp)
    os.replace(tmp, path)
    created.append(path)
    return path
