"""AUTOMATIC1111 glue for one generation (``host/`` is the only package that reads WebUI internals;
settings, models and the UI are shared by every host family and live beside this package).

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

import weakref
from dataclasses import dataclass
from typing import Any

from ...core.errors import IPAdapterError
from ...core.job import Job
from ...core.load.compat import check_unet
from ...interop.controlnet import coexistence_note
from ..common import (
    StateBase,
    append_faces,
    append_maps,
    drop_state,
    get_state,
    new_state,
    prepare_or_record,
    register_common,
    step_progress,
    wrap_sampler,
)
from ..models import engine
from ..unet import unet_layout
from .placement import current_placement, placement

# -- per-job state ----------------------------------------------------------------------------
_live_jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # only for sweeping; holds nothing alive


def sweep() -> None:
    """Detach any job still attached (a job whose sampler never returned, a reloaded model)."""
    for job in list(_live_jobs):
        job.detach()


@dataclass
class GenerationState(StateBase):
    def ensure_job(self, sd_model: Any) -> None:
        """Prepare (or reuse) the job for the UNet about to sample, and attach it."""
        unet, modules, signature = unet_layout(sd_model)
        place = placement(sd_model, unet)
        requests, seeds = self.prepared_requests()
        key = (signature, place.device, place.dtype, seeds)
        if self.job is None or key != self.key:
            if self.job is not None:
                self.job.detach()
                self.count_job()
            self.job = engine().prepare(requests, signature, place)
            self.key = key
            _live_jobs.add(self.job)
        self.job.attach(unet, modules)
        self.job.record_rows = self.maps
        self.start_maps()
        self.log_units()
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

    def detach(self) -> None:
        if self.job is not None:
            self.job.detach()

    def count_job(self) -> None:
        """Fold the job's step counts into the generation's (a new batch may bring a new job)."""
        if self.job is not None:
            self.count_uncond(self.job.steps_seen, self.job.uncond_skipped_steps)
            self.job.steps_seen = self.job.uncond_skipped_steps = 0

    def end_pass(self, p: Any) -> None:
        self.detach()
        self.keep_maps(p)


def process(p: Any, args: tuple) -> None:
    sweep()
    new_state(p, args, GenerationState)


def before_sampling(p: Any) -> None:
    state: GenerationState | None = get_state(p)
    if state is None:
        return
    wrap_sampler(p, state, lambda: state.end_pass(p))  # hooks come off in a finally around the sampler
    if state.error is not None:
        return
    if state.skip_hires(p):
        state.detach()
        return
    state.take_seeds(p)
    prepare_or_record(state, lambda: state.follow_inpaint_area(p) and state.ensure_job(p.sd_model))
    state.check_double_lora(p)


def on_cfg_denoiser(params: Any) -> None:
    state: GenerationState | None = get_state(getattr(params.denoiser, "p", None))
    if not isinstance(state, GenerationState) or state.job is None:
        return
    from modules import shared

    if state.job.attached and shared.sd_model.model.diffusion_model is not state.job.unet:
        state.switch_model(shared.sd_model)
    if not state.job.attached:
        return
    cond = params.text_cond["crossattn"] if isinstance(params.text_cond, dict) else params.text_cond
    state.job.begin_step(step_progress(params), int(cond.shape[0]), int(params.x.shape[0]))


def postprocess(p: Any, processed: Any = None) -> None:
    state: GenerationState | None = get_state(p)
    if state is not None:
        state.detach()
        state.count_job()
        state.note_precise(p)
        if processed is not None:
            append_maps(p, processed, state)
            append_faces(processed, state)
        drop_state(p)


def register_callbacks() -> None:
    """Once, at script import; A1111 drops a script's callbacks when it reloads the script."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="ipadapter_cfg_denoiser")
    script_callbacks.on_model_loaded(lambda _m: sweep(), name="ipadapter_model_loaded")
    script_callbacks.on_script_unloaded(sweep, name="ipadapter_unloaded")
    register_common(script_callbacks, current_placement)
