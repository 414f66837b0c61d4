"""AUTOMATIC1111 glue for one generation (``host/`` is the only package that reads WebUI internals;
settings, models and the UI live in the modules beside this one).

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
from typing import Any

from ..api.bare_unit import install as install_bare_unit
from ..api.errors import http_error
from ..core.compat import check_unet
from ..core.engine import Placement, UnitRequest
from ..core.errors import IPAdapterError
from ..core.job import Job
from ..interop.controlnet import coexistence_note
from ..interop.xyz import apply_overrides, register_xyz_axes
from ..schema import DEFAULTS, with_default_weight
from ..ui.args import parse_script_args
from ..ui.infotext import KEY, unit_infotext
from .a1111_ui import build_ui, download_models
from .models import _current_placement, _EngineHolder, engine, loaded_signature, model_hash, placement, unet_layout
from .settings import opt, register_settings

__all__ = [
    "Placement",
    "_EngineHolder",
    "build_ui",
    "download_models",
    "engine",
    "loaded_signature",
    "placement",
    "unet_layout",
]

log = logging.getLogger("ipadapter")

STATE_ATTR = "ipadapter_state"


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
        note = coexistence_note(modules)
        if note:
            self.note(note)

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


def _app_started(_demo: Any, app: Any) -> None:
    from ..api.routes import register_routes

    register_routes(app, engine, loaded_signature, _current_placement)
    install_bare_unit(app)
