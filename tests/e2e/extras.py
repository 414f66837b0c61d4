"""Model files the session writes into a WebUI install besides the tiny adapter and encoder.

Written in ``WEBUI_ROOT`` mode only, after :func:`~tests.e2e.webui.write_tiny_models` and before
the server starts (so its first scan lists them), and removed with the rest afterwards:

* a ``.bin`` twin of the tiny adapter: the same tensors in torch's pickle format, saved by the test
  environment's torch, so the file carries the ``.format_version`` entry current torch writes (and
  A1111's 2023 allow-list in ``modules/safe.py`` would call "malicious"); see test_webui_files.py;
* the tiny SDXL of :mod:`tests.e2e.sdxl` (``WEBUI_E2E_SDXL``; on by default for A1111), or on the
  Forge families an adapter for a full-size SDXL checkpoint found in the install; see
  test_webui_sdxl.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import sdxl
from .webui import ADAPTER_FILE

BIN_TWIN_FILE = "e2e-tiny-plus-twin.bin"


@dataclass
class ExtraModels:
    """What :func:`write_extra_models` wrote."""

    bin_twin: Path | None = None  # the .bin twin of ADAPTER_FILE
    sdxl: sdxl.SdxlFiles | None = None
    sdxl_skipped: str = ""  # why there is no tiny SDXL, when there is none


def write_bin_twin(adapter: Path, name: str = BIN_TWIN_FILE) -> Path:
    """``adapter``'s tensors re-saved beside it as a ``.bin`` (the nested image_proj/ip_adapter
    layout) by this environment's ``torch.save``."""
    from ipadapter_ext.core.load.formats import load_adapter_tensors, save_adapter_tensors

    twin = adapter.with_name(name)
    tmp = twin.with_name(twin.name + ".part.bin")
    save_adapter_tensors(load_adapter_tensors(adapter), tmp)
    os.replace(tmp, twin)
    return twin


def write_extra_models(root: Path, python: str, created: list[Path]) -> ExtraModels:
    """Write the extra files into the install at ``root`` (interpreter ``python``), appending every
    path to ``created`` as it appears."""
    extras = ExtraModels()
    extras.bin_twin = write_bin_twin(root / "models" / "ipadapter" / ADAPTER_FILE)
    created.append(extras.bin_twin)
    kind, extras.sdxl_skipped = sdxl.wanted(root)
    if kind == "tiny":
        extras.sdxl = sdxl.write_tiny_sdxl(root, python, created)
    elif kind == "full":
        extras.sdxl = sdxl.write_full_sdxl_adapter(root, created)
    return extras
