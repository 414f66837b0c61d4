"""The A1111 test environment: the WebUI's own ldm UNet (tiny SD1 topology), model folders with
tiny files, the real scripts/ipadapter.py loaded as the WebUI loads it, and helpers to run jobs
through the doubles of tests/doubles. The ``webui`` fixture (tests/conftest.py) uses
:func:`make_webui`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from modules import script_callbacks, shared
from PIL import Image

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.host import a1111
from ipadapter_ext.ui.layout import UNIT_FIELDS
from tests.doubles.sd_model import SDModel
from tests.doubles.webui_sampling import Processing, run_job

from .ui_values import UI_VALUES

__all__ = ["run_job"]  # re-exported for the test modules
from tests.factories import adapter_shapes, adapter_tensors
from tests.test_encoder import _save, _tiny_model

CTX = 48


REPO = Path(__file__).resolve().parents[1]


def tiny_unet(seed: int = 0, context_dim: int = CTX) -> UNetModel:
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
        num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=context_dim, legacy=False,
    ).eval()  # fmt: skip
    for m in unet.modules():  # ldm zero-initialises output layers, which would hide attention changes
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.reset_parameters()
    return unet.requires_grad_(False)


def tiny_sdxl_unet(seed: int = 0, context_dim: int = 64, levels: tuple[int, ...] = (2, 4)) -> UNetModel:
    """SDXL's topology in small: no attention at the first level and linear projections in and
    out of the transformers (one block each: sdkit's ldm needs a context list for more). SDXL's
    refiner is another context width here, so an SDXL adapter does not fit it."""
    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=list(levels),
        num_res_blocks=2, channel_mult=[1, 2, 4], num_heads=4, use_spatial_transformer=True,
        transformer_depth=1, context_dim=context_dim, legacy=False, use_linear_in_transformer=True,
    ).eval()  # fmt: skip
    for m in unet.modules():
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.reset_parameters()
    return unet.requires_grad_(False)


def sd_model(unet: UNetModel, sdxl: bool = False, info=None) -> SDModel:
    """The model object A1111 samples with (tests/doubles/sd_model.py) around ``unet``."""
    return SDModel(unet, sdxl=sdxl, info=info)


def attn2_widths(unet: UNetModel) -> tuple[int, ...]:
    return a1111.unet_layout(sd_model(unet))[2].attn2_widths


def make_webui(tmp_path, monkeypatch):
    """Fresh doubles, model folders with tiny files, and the script loaded as the WebUI loads it."""
    shared.reset()
    script_callbacks.callbacks.clear()
    a1111._EngineHolder.reset()
    reset_devices()
    import modules.paths_internal as paths_internal

    monkeypatch.setattr(paths_internal, "models_path", str(tmp_path / "models"))
    unet = tiny_unet()
    widths = attn2_widths(unet)
    adapters = tmp_path / "models" / "ipadapter"
    adapters.mkdir(parents=True)
    (tmp_path / "models" / "clip_vision").mkdir()
    shapes = adapter_shapes("resampler", CTX, widths, 128, tokens=4, res_dim=32, inner=64)
    save_adapter_tensors(adapter_tensors(shapes, seed=1), adapters / "tiny-plus.safetensors")
    save_adapter_tensors(adapter_tensors(adapter_shapes("base", CTX, widths, 40), seed=2), adapters / "tiny-base.bin")
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("base", 64, widths, 40), seed=3), adapters / "tiny-xl.safetensors"
    )
    _save(_tiny_model(seed=4), tmp_path / "models" / "clip_vision" / "tiny-clip.safetensors")
    spec = importlib.util.spec_from_file_location("ipadapter", REPO / "scripts" / "ipadapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield SimpleNamespace(script=module.IPAdapterScript(), unet=unet, model=sd_model(unet))
    a1111.sweep()


def reset_devices() -> None:
    """The doubles' host back on the CPU: no fake GPU, nothing held by lowvram or sd_models."""
    from modules import devices, lowvram, sd_models

    devices.device = devices.cpu
    lowvram.module_in_gpu = None
    sd_models.model_data.sd_model = None


def image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy())


def unit_args(*units: dict, enabled: bool = True) -> list:
    """Script args in the UI layout: [accordion, (UNIT_FIELDS) × 3]; ``more`` names more_images."""
    args: list = [enabled]
    for i in range(3):
        u = dict(UI_VALUES)
        if i < len(units):
            given = {("more_images" if k == "more" else k): v for k, v in units[i].items()}
            u.update({"enabled": True, **given})
        args += [u[name] for name in UNIT_FIELDS]
    return args


def job(model, repeats=(1,), cond_tokens=77, **kw) -> Processing:
    g = torch.Generator().manual_seed(7)
    cond = torch.randn(sum(repeats), cond_tokens, CTX, generator=g)
    uncond = torch.randn(len(repeats), 77, CTX, generator=g)
    return Processing(sd_model=model, cond=cond, uncond=uncond, repeats=list(repeats), **kw)


PLUS = {"image": image(1), "model": "tiny-plus", "weight": 0.8}


def no_hooks_left(unet) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


def reference_check(webui, p: Processing, requests: list[UnitRequest], unet=None, calls=None):
    """Every UNet call's rows equal running each row alone with its own cond/uncond tokens."""
    unet = unet or webui.unet
    model = sd_model(unet)
    _, modules, signature = a1111.unet_layout(model)
    ref_job = a1111.engine().prepare(requests, signature, a1111.placement(model, unet))
    n_cond = sum(p.repeats)
    calls = calls if calls is not None else [c for s in p.samplers for c in s.denoiser.calls]
    assert calls
    kv = [unit.kv.kv for unit in ref_job.units]  # per unit, per layer: (K, V) with row 0 uncond, row 1 cond
    weights = [unit.weight for unit in ref_job.units]
    current = {"row": 0}

    def provider(layer, _q, _ctx):  # independent of Job's layout tracking
        r = current["row"]
        return [ImageKV(k[layer][0][r : r + 1], k[layer][1][r : r + 1], w) for k, w in zip(kv, weights, strict=True)]

    with Attn2Hooks(modules, provider):
        for call in calls:
            for i, row in enumerate(call.rows):
                current["row"] = 1 if row < n_cond else 0
                expected = unet(call.x[i : i + 1], call.timesteps[i : i + 1], context=call.context[i : i + 1])
                torch.testing.assert_close(call.out[i : i + 1], expected, atol=2e-4, rtol=1e-4)


def pasted_values(script, params: dict, prefix: str = "script_txt2img_ipadapter_") -> dict:
    """What pasting ``params`` (a parsed infotext) puts into each component, by elem_id less ``prefix``."""
    pasted = {}
    for component, key in script.infotext_fields:
        value = key(params) if callable(key) else params.get(key)
        if value is not None:
            pasted[component.elem_id.removeprefix(prefix)] = value
    return pasted
