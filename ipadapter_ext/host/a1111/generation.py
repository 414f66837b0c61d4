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
* ``on_cfg_denoiser`` tells the job each step's progress and row layout, and follows a refiner
  switch: ``sd_samplers_common.apply_refiner`` runs at the top of the CFG denoiser's forward,
  before this callback, and loads the refiner through ``sd_models.reload_model_weights``, which
  fires ``model_loaded_callback`` (sweeping every job) and either reloads the weights into the same
  model or builds a new one. During a pass the job then goes onto the UNet that samples now, with
  a console line, when its adapters fit that UNet, and is skipped with a console line otherwise.
* ``postprocess``, the next job, a model load and script unload sweep anything left.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from ...core.job import Job
from ...interop.controlnet import coexistence_note
from ..callbacks import register
from ..common import (
    StateBase,
    end_generation,
    get_state,
    new_state,
    prepare_or_record,
    register_common,
    step_progress,
    wrap_sampler,
)
from ..models import engine
from ..outputs import append_faces, append_maps
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
    #: True from a pass's preparation to its end: the job follows whichever UNet samples (a refiner
    #: loaded mid-pass), until one its adapters do not fit.
    following: bool = False

    def ensure_job(self, sd_model: Any) -> None:
        """Prepare (or reuse) the job for the UNet about to sample, and attach it."""
        unet, modules, signature = unet_layout(sd_model)
        place = placement(sd_model, unet)
        requests, seeds = self.prepared_requests()
        key = (signature, place.device, place.dtype, seeds)
        if self.job is not None and key != self.key and (problem := self.fits(signature)) is not None:
            # A later pass on another model than the one the units were prepared for: the refiner
            # (or a hires checkpoint) is still loaded. Like a refiner switch, not an error.
            self.job.detach()
            self.note(f"IP-Adapter: not applied to {signature.family} in this pass: {problem}")
            return
        if self.job is None or key != self.key:
            if self.job is not None:
                self.job.detach()
                self.count_job()
            self.job = engine().prepare(requests, signature, place)
            self.key = key
            _live_jobs.add(self.job)
        self.job.attach(unet, modules)
        self.following = True
        self.job.record_rows = self.maps
        self.start_maps()
        self.log_units()
        note = coexistence_note(modules)
        if note:
            self.note(note)

    def switch_model(self, sd_model: Any) -> None:
        """The refiner replaced the model mid-sampling (a new model, or new weights in the same
        one): follow it if the adapters fit it, the FaceID LoRA included; otherwise stop here."""
        assert self.job is not None
        unet, modules, signature = unet_layout(sd_model)
        problem = self.fits(signature)
        if problem is not None:
            self.job.detach()
            self.following = False
            self.note(f"IP-Adapter: not applied after the switch to {signature.family}: {problem}")
            return
        self.job.attach(unet, modules)
        self.job.follow_device(placement(sd_model, unet).device)
        self.note(f"IP-Adapter: applied to the refiner ({signature.family}) too.")

    def detach(self) -> None:
        self.following = False
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
    wrap_sampler(p, state, lambda live: live.end_pass(p))  # hooks come off in a finally around the sampler
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

    # After a refiner switch the job is detached (the model-loaded sweep) or on the old UNet.
    if state.following and (not state.job.attached or shared.sd_model.model.diffusion_model is not state.job.unet):
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
        end_generation(p)


def register_callbacks() -> None:
    """Once, at script import; A1111 drops a script's callbacks when it reloads the script."""
    from modules import script_callbacks

    register(script_callbacks.on_cfg_denoiser, on_cfg_denoiser, "ipadapter_cfg_denoiser")
    register(script_callbacks.on_model_loaded, lambda _m: sweep(), "ipadapter_model_loaded")
    register(script_callbacks.on_script_unloaded, sweep, "ipadapter_unloaded")
    register_common(script_callbacks, current_placement)
