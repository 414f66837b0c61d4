"""A throwaway probe extension the suite writes into a WebUI install (``WEBUI_ROOT`` mode) and
removes afterwards: one route, ``GET /e2e-probe/v1/memory``, that says where the host keeps the
loaded model, so the memory-flag tests can check from outside that ``--medvram``/``--lowvram``
really engaged A1111's ``modules/lowvram.py`` (its forward pre-hooks on the UNet wrapper, or on
the UNet's blocks), on a GPU how much VRAM is allocated between generations, and on the Forge
family what its memory management lists as loaded (the class of each entry's model).

It is test set-up, written by the test code like the tiny models; nothing of it is part of the
extension.
"""

from __future__ import annotations

from pathlib import Path

PROBE_DIR = "e2e-ipadapter-probe"
ROUTE = "/e2e-probe/v1/memory"

SCRIPT = (
    '''"""Written by sd-webui-ipadapter's end-to-end suite (tests/e2e/probe.py); removed after the run."""

from modules import script_callbacks


def _loaded_models():
    """The class names of the models in the Forge family's list of loaded models (None elsewhere)."""
    import importlib

    for name in ("backend.memory_management", "ldm_patched.modules.model_management"):
        try:
            entries = list(importlib.import_module(name).current_loaded_models)
        except (ImportError, AttributeError):
            continue
        return [type(getattr(getattr(e, "model", None), "model", None)).__name__ for e in entries]
    return None


def _report():
    import torch
    from modules import devices, shared

    model = shared.sd_model
    forge = getattr(model, "forge_objects", None)
    unet = forge.unet.model.diffusion_model if forge is not None else model.model.diffusion_model
    wrapper = None if forge is not None else model.model
    cmd = shared.cmd_opts
    info = {
        "device": str(devices.device),
        "flags": {name: bool(getattr(cmd, name, False)) for name in ("medvram", "lowvram", "medvram_sdxl")},
        "lowvram": bool(getattr(model, "lowvram", False)),
        "unet_device": str(next(unet.parameters()).device),
        "wrapper_pre_hooks": 0 if wrapper is None else len(wrapper._forward_pre_hooks),
        "block_pre_hooks": len(getattr(unet, "middle_block", unet)._forward_pre_hooks),
        "cuda": bool(torch.cuda.is_available()),
        "loaded_models": _loaded_models(),
    }
    if info["cuda"]:
        torch.cuda.synchronize()
        info.update(
            gpu=torch.cuda.get_device_name(0),
            allocated=int(torch.cuda.memory_allocated()),
            reserved=int(torch.cuda.memory_reserved()),
        )
    return info


def _routes(_demo, app):
    app.add_api_route("'''
    + ROUTE
    + """", _report, methods=["GET"])


script_callbacks.on_app_started(_routes)  # no name=: older hosts (Forge Classic) take none
"""
)


def write_probe(root: Path, created: list[Path]) -> Path:
    """The probe extension under ``root/extensions``; every path made is appended to ``created``."""
    folder = root / "extensions" / PROBE_DIR
    scripts = folder / "scripts"
    for path in (folder, scripts):
        if not path.is_dir():
            path.mkdir(parents=True)
            created.append(path)
    script = scripts / "e2e_probe.py"
    script.write_text(SCRIPT)
    created.append(script)
    return script
