"""AUTOMATIC1111 glue: the only module that reads WebUI internals.

Lifetime of the hooks, per generation:

* ``process``: arguments are parsed into units; the per-job state goes on ``p``.
* ``process_before_every_sampling`` (once per pass; twice with hires fix): the units are
  prepared for the UNet about to run (checked, encoded, K/V computed, reused across passes when
  the UNet is the same), the hooks are attached, and the sampler's ``sample``/``sample_img2img``
  of this job are wrapped so that hooks come off in a ``finally`` on every outcome: normal end,
  exception, interrupt or skip. A unit that cannot apply raises there, before sampling, so the
  user sees the error instead of an image silently made without it.
* ``on_cfg_denoiser`` tells the job each step's progress and row layout, and notices a refiner
  switch.
* ``postprocess``, the next job, a model load and script unload sweep anything left.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..api.errors import http_error
from ..core.compat import UNetSignature, check_unet
from ..core.engine import Engine, Placement, UnitRequest
from ..core.errors import IPAdapterError
from ..core.job import Job
from ..core.known_models import KNOWN_MODELS, find_known_model
from ..core.layers import map_ldm_attn2
from ..core.registry import ModelRegistry
from ..interop.xyz import apply_overrides, register_xyz_axes
from ..schema import DEFAULTS, WEIGHT_RANGE, with_default_weight
from ..ui.args import parse_script_args
from ..ui.infotext import KEY, paste_notice, pasted_unit, unit_infotext

log = logging.getLogger("ipadapter")

STATE_ATTR = "ipadapter_state"
SETTINGS_SECTION = ("ipadapter", "IP-Adapter")


# -- settings ---------------------------------------------------------------------------------
def opt(name: str, default: Any) -> Any:
    from modules import shared

    return getattr(shared.opts, name, default)


def register_settings() -> None:
    import gradio as gr
    from modules import shared

    def add(key: str, default: Any, label: str, component: Any = None, args: dict | None = None) -> None:
        shared.opts.add_option(key, shared.OptionInfo(default, label, component, args, section=SETTINGS_SECTION))

    add("ipadapter_units", 3, "Number of IP-Adapter units (restart the UI to apply)", gr.Slider,
        {"minimum": 1, "maximum": 8, "step": 1})  # fmt: skip
    add("ipadapter_extra_folders", "", "Extra folders with IP-Adapter and CLIP vision models (comma-separated)")
    add("ipadapter_cache_size", 32, "Image-embedding cache size (entries)", gr.Slider,
        {"minimum": 0, "maximum": 256, "step": 1})  # fmt: skip
    add("ipadapter_default_weight", DEFAULTS.weight, "Default weight of a unit (UI, and API units that give none)",
        gr.Slider, {"minimum": WEIGHT_RANGE[0], "maximum": WEIGHT_RANGE[1], "step": 0.05})  # fmt: skip
    add(
        "ipadapter_offload_encoder",
        False,
        "Move the image encoder off the GPU after encoding (always on with --medvram/--lowvram)",
    )
    add("ipadapter_hires", True, "Apply IP-Adapter on the hires fix pass too")


# -- models -----------------------------------------------------------------------------------
class _EngineHolder:
    """The process-wide caches (models, embeddings); created on first use, never at import."""

    engine: Engine | None = None

    @classmethod
    def get(cls) -> Engine:
        if cls.engine is None:
            from modules.paths_internal import models_path

            root = Path(models_path)
            adapters = root / "ipadapter"
            adapters.mkdir(parents=True, exist_ok=True)
            extra = [Path(p.strip()) for p in str(opt("ipadapter_extra_folders", "")).split(",") if p.strip()]
            registry = ModelRegistry([adapters, *extra], [root / "clip_vision", *extra], [root / "ControlNet"])
            cls.engine = Engine(registry, embedding_cache_size=int(opt("ipadapter_cache_size", 32)))
        return cls.engine

    @classmethod
    def reset(cls) -> None:
        cls.engine = None


def engine() -> Engine:
    return _EngineHolder.get()


# -- UNet -------------------------------------------------------------------------------------
def unet_layout(sd_model: Any) -> tuple[torch.nn.Module, list[torch.nn.Module], UNetSignature]:
    """The UNet, its attn2 modules in adapter key order, and its signature for the checks."""
    unet = sd_model.model.diffusion_model
    found = {name: m for name, m in unet.named_modules() if name.endswith("attn2")}
    modules = [found[s.name] for s in map_ldm_attn2(found)]
    label = (
        "SDXL" if getattr(sd_model, "is_sdxl", False) else "SD2.x" if getattr(sd_model, "is_sd2", False) else "SD1.5"
    )
    context = modules[0].to_k.in_features if modules else 0
    return unet, modules, UNetSignature(context, tuple(m.to_k.out_features for m in modules), label)


def placement(sd_model: Any, unet: torch.nn.Module) -> Placement:
    from modules import devices, shared

    param = next(unet.parameters())
    dtype = param.dtype if param.dtype in (torch.float16, torch.bfloat16, torch.float32) else devices.dtype
    cmd = shared.cmd_opts
    lowmem = bool(
        getattr(cmd, "medvram", False)
        or getattr(cmd, "lowvram", False)
        or (getattr(cmd, "medvram_sdxl", False) and getattr(sd_model, "is_sdxl", False))
    )
    return Placement(
        device=param.device,
        dtype=dtype,
        encoder_dtype=dtype if param.device.type != "cpu" else torch.float32,
        offload_encoder=lowmem or bool(opt("ipadapter_offload_encoder", False)),
        upcast_attention=bool(opt("upcast_attn", False)),
    )


# -- per-job state ----------------------------------------------------------------------------
_live_jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # only for sweeping; holds nothing alive


def sweep() -> None:
    """Detach any job still attached (a job whose sampler never returned, a reloaded model)."""
    for job in list(_live_jobs):
        job.detach()


@dataclass
class GenerationState:
    requests: list[UnitRequest]
    error: IPAdapterError | None = None
    job: Job | None = None
    key: tuple | None = None
    logged: bool = False
    notes: set[str] = field(default_factory=set)

    def ensure_job(self, sd_model: Any) -> None:
        """Prepare (or reuse) the job for the UNet about to sample, and attach it."""
        unet, modules, signature = unet_layout(sd_model)
        place = placement(sd_model, unet)
        key = (signature, place.device, place.dtype)
        if self.job is None or key != self.key:
            if self.job is not None:
                self.job.detach()
            self.job = engine().prepare(self.requests, signature, place)
            self.key = key
            _live_jobs.add(self.job)
        self.job.attach(unet, modules)
        if not self.logged:
            self.logged = True
            for unit in self.job.units:
                print(unit.log_line())  # the WebUI console is where users look

    def switch_model(self, sd_model: Any) -> None:
        """The refiner replaced the model mid-sampling: follow it if the adapters fit it."""
        assert self.job is not None
        unet, modules, signature = unet_layout(sd_model)
        try:
            for unit in self.job.units:
                check_unet(unit.adapter.info, signature, unit.adapter.name)
        except IPAdapterError as exc:
            self.job.detach()
            self.note(f"IP-Adapter: not applied after the switch to {signature.family}: {exc}")
            return
        self.job.attach(unet, modules)
        self.note(f"IP-Adapter: applied to the refiner ({signature.family}) too.")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.add(text)
            print(text)

    def detach(self) -> None:
        if self.job is not None:
            self.job.detach()


def process(p: Any, args: tuple) -> None:
    sweep()
    if hasattr(p, STATE_ATTR):
        delattr(p, STATE_ATTR)
    try:
        units = parse_script_args(args)
        default_weight = float(opt("ipadapter_default_weight", DEFAULTS.weight))
        units = [(n, with_default_weight(u, default_weight)) for n, u in units]
        units = apply_overrides(p, units)  # X/Y/Z plot axes
        requests = [unit.to_request(number) for number, unit in units]
    except IPAdapterError as exc:
        setattr(p, STATE_ATTR, GenerationState([], error=exc))
        return
    for (number, unit), request in zip(units, requests, strict=True):
        p.extra_generation_params[KEY.format(number)] = unit_infotext(unit, model_hash(unit.model), len(request.images))
    if requests:
        setattr(p, STATE_ATTR, GenerationState(requests))


def before_sampling(p: Any) -> None:
    state: GenerationState | None = getattr(p, STATE_ATTR, None)
    if state is None:
        return
    _wrap_sampler(p, state)
    if state.error is not None:
        return
    if getattr(p, "is_hr_pass", False) and not opt("ipadapter_hires", True):
        state.detach()
        state.note("IP-Adapter: not applied on the hires pass (setting).")
        return
    try:
        state.ensure_job(p.sd_model)
    except IPAdapterError as exc:
        state.error = exc
    except Exception as exc:  # never let a bug turn into a silent generation without the unit
        log.exception("IP-Adapter failed to prepare")
        state.error = IPAdapterError(f"IP-Adapter failed to prepare: {type(exc).__name__}: {exc}")


def _wrap_sampler(p: Any, state: GenerationState) -> None:
    """Wrap this job's sampler instance (not its class) so hooks come off in a ``finally``.
    An API request gets its error as HTTP 422 with the message as ``detail``."""
    sampler = p.sampler
    is_api = bool(getattr(p, "is_api", False))
    for name in ("sample", "sample_img2img"):
        if name in vars(sampler) or not hasattr(sampler, name):
            continue
        original = getattr(sampler, name)

        def run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if state.error is not None:
                raise http_error(state.error) if is_api else state.error
            try:
                return _original(*args, **kwargs)
            finally:
                state.detach()

        setattr(sampler, name, run)


def on_cfg_denoiser(params: Any) -> None:
    denoiser = params.denoiser
    state: GenerationState | None = getattr(getattr(denoiser, "p", None), STATE_ATTR, None)
    if state is None or state.job is None:
        return
    from modules import shared

    if state.job.attached and shared.sd_model.model.diffusion_model is not state.job.unet:
        state.switch_model(shared.sd_model)
    if not state.job.attached:
        return
    total = getattr(denoiser, "total_steps", None) or params.total_sampling_steps or 1
    step = getattr(denoiser, "step", params.sampling_step)
    cond = params.text_cond["crossattn"] if isinstance(params.text_cond, dict) else params.text_cond
    state.job.begin_step(step / total, int(cond.shape[0]), int(params.x.shape[0]))


def postprocess(p: Any) -> None:
    state: GenerationState | None = getattr(p, STATE_ATTR, None)
    if state is not None:
        state.detach()
        delattr(p, STATE_ATTR)


def register_callbacks() -> None:
    """Once, at script import; A1111 drops a script's callbacks when it reloads the script."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="ipadapter_cfg_denoiser")
    script_callbacks.on_model_loaded(lambda _m: sweep(), name="ipadapter_model_loaded")
    script_callbacks.on_script_unloaded(sweep, name="ipadapter_unloaded")
    script_callbacks.on_ui_settings(register_settings, name="ipadapter_settings")
    script_callbacks.on_app_started(_app_started, name="ipadapter_routes")
    if hasattr(script_callbacks, "on_before_ui"):  # before the X/Y/Z plot script builds its axis list
        script_callbacks.on_before_ui(register_xyz, name="ipadapter_xyz_axes")


def register_xyz() -> None:
    """The IP-Adapter axes of the X/Y/Z plot script (idempotent; nothing when it is not loaded)."""
    register_xyz_axes(lambda: [e.name for e in engine().registry.adapters() if e.info is not None])


def loaded_signature() -> UNetSignature | None:
    """The loaded checkpoint's UNet signature, or ``None`` when no model is loaded."""
    from modules import shared

    try:
        return unet_layout(shared.sd_model)[2]
    except Exception:  # no model loaded (yet), or one that is not an LDM UNet
        return None


def _app_started(_demo: Any, app: Any) -> None:
    from ..api.routes import register_routes

    register_routes(app, engine, loaded_signature, _current_placement)


def _current_placement() -> Placement:
    """Encode on the loaded UNet's device (CPU when none is loaded)."""
    from modules import shared

    try:
        unet = shared.sd_model.model.diffusion_model
        return placement(shared.sd_model, unet)
    except Exception:
        return Placement(device=torch.device("cpu"), dtype=torch.float32)


# -- UI ---------------------------------------------------------------------------------------
def ui_hooks() -> Any:
    from ..ui.accordion import UiHooks

    def adapters() -> list[str]:
        return [e.name for e in engine().registry.adapters() if e.info is not None]

    def encoders() -> list[str]:
        return [e.name for e in engine().registry.encoders() if e.spec is not None]

    def describe(model: str, _encoder: str) -> str:
        try:
            entry = engine().registry.adapter(model)
        except IPAdapterError:
            return ""
        if entry.info is None:
            return f"⚠ {entry.error}"
        text = entry.info.describe()
        try:
            from modules import shared

            _, _, signature = unet_layout(shared.sd_model)
            check_unet(entry.info, signature, f"'{model}'")
        except IPAdapterError as exc:
            text += f"  \n⚠ {exc}"
        except Exception:  # no model loaded yet
            pass
        return text

    default_weight = float(opt("ipadapter_default_weight", DEFAULTS.weight))
    return UiHooks(
        adapters,
        encoders,
        describe,
        lambda: engine().registry.refresh(),
        default_weight,
        known_models=lambda: [m.name for m in KNOWN_MODELS],
        download=download_models,
    )


def download_models(names: list[str] | None) -> str:
    """The UI's "Download official models": sha256-checked, atomic, then the lists are rescanned."""
    from modules.paths_internal import models_path

    from ..download import download, target_dir

    lines = []
    for name in names or []:
        model = find_known_model(name)
        if model is None:
            lines.append(f"✗ {name}: not an official model this version knows")
            continue
        try:
            path = download(model, target_dir(model, Path(models_path)))
            lines.append(f"✓ {name} → models/{path.parent.name}")
        except IPAdapterError as exc:
            lines.append(f"✗ {exc}")
        except OSError as exc:  # no network, disk full …
            lines.append(f"✗ {name}: {exc}. Download it by hand into models/{model.folder}.")
    engine().registry.refresh()
    return "  \n".join(lines) or "Choose one or more models first."


def build_ui(script: Any, _is_img2img: bool) -> list:
    from modules.ui_components import InputAccordion, ToolButton

    from ..ui.accordion import build

    built = build(InputAccordion, script.elem_id, int(opt("ipadapter_units", 3)), ui_hooks(), ToolButton)
    script.infotext_fields = paste_fields(built)
    script.paste_field_names = [KEY.format(n) for n in range(1, len(built.units) + 1)]
    return built.inputs


def paste_fields(built: Any) -> list[tuple[Any, Any]]:
    """(component, params → value) pairs restoring every unit from a pasted infotext."""
    fields: list[tuple[Any, Any]] = [
        (built.enabled, lambda d: any(pasted_unit(d, n) is not None for n in range(1, len(built.units) + 1)))
    ]
    for n, unit in enumerate(built.units, start=1):

        def field(name: str, n: int = n) -> Any:
            return lambda d: (pasted_unit(d, n) or {}).get(name)

        fields += [
            (unit["enabled"], lambda d, n=n: pasted_unit(d, n) is not None),
            (unit["info"], lambda d, n=n: None if (u := pasted_unit(d, n)) is None else paste_notice(u)),
        ]
        fields += [(unit[name], field(name)) for name in ("model", "encoder", "weight", "start", "end", "crop")]
    return fields


def model_hash(name: str) -> str | None:
    """The WebUI's cached sha256 of an adapter file, shortened like checkpoint hashes."""
    try:
        entry = engine().registry.adapter(name)
        from modules import hashes

        digest = hashes.sha256(str(entry.path), f"ipadapter/{entry.name}")
    except Exception:  # unknown model (reported at sampling) or no hash available
        return None
    return digest[:10] if digest else None
