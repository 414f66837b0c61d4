"""stable-diffusion-webui-forge glue: the same units, UI, API, infotext and errors as on A1111
(``common.py``), applied through Forge's UNet patcher instead of torch hooks.

Lifetime, per generation:

* ``process``: arguments → unit requests and infotext (shared with A1111).
* ``process_before_every_sampling`` (once per pass; Forge has just reset
  ``forge_objects`` from ``forge_objects_after_applying_lora``): the units are prepared for the
  UNet about to run (reused across passes when it is the same), then the UNet patcher is
  **cloned**, one attn2 replace patch is registered per cross-attention transformer block
  (chaining any patch already on that key), the K/V go to Forge's memory management, and the
  clone is set back on ``p.sd_model.forge_objects``. The original patcher is never modified, so
  nothing needs removing: the next pass starts from the unpatched one.
* ``on_cfg_denoiser`` reports each step's sigma and step fraction to the patches.
* A unit that cannot apply raises when sampling starts (HTTP 422 for the API), as on A1111.
* Flux (XLabs adapters): the same, with object patches on the double blocks and a unet function
  wrapper instead of attn2 patches (``flux.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..common import (
    StateBase,
    append_faces,
    append_maps,
    end_generation,
    get_state,
    new_state,
    prepare_or_record,
    register_common,
    step_progress,
    wrap_sampler,
)
from ..models import engine
from ..unet import attn2_slots, is_flux, model_signature
from . import flux as forge_flux
from .attn2_patch import Attn2Patch, ForgeRun, KVModule, StepClock
from .placement import current_placement, forge_placement

BUILTIN_PATCH = "CrossAttentionPatch"  # extensions-builtin/sd_forge_ipadapter's patch class


@dataclass
class ForgeState(StateBase):
    clock: StepClock = field(default_factory=StepClock)
    runs: list[ForgeRun] = field(default_factory=list)  # this generation's passes, released at its end

    def release(self) -> None:
        for run in self.runs:
            run.release()
        self.runs = []

    def end_pass(self, p: Any) -> None:
        if self.job is not None:
            self.job.detach_loras()
        self.keep_maps(p)

    def patch(self, sd_model: Any) -> None:
        """Prepare (or reuse) the job, then clone-patch-set the UNet patcher of this pass."""
        patcher = sd_model.forge_objects.unet
        flux = is_flux(patcher.model.diffusion_model)
        signature = model_signature(sd_model)
        place = forge_placement(patcher)
        key = (signature, place.device, place.dtype)
        if self.job is None or key != self.key:
            self.job = engine().prepare(self.requests, signature, place)
            self.key = key
        self.log_units()
        self.clock = StepClock()  # a new pass: no step reported yet
        self.start_maps()
        run = ForgeRun(self.job.units, _sigma_ranges(patcher, self.job.units), self.clock, self.job.upcast, self.maps)
        run.per_image_refs = self.job.per_image_refs
        self.runs.append(run)
        if flux:
            sd_model.forge_objects.unet = forge_flux.patched_clone(patcher, run)
            return
        clone = patcher.clone()
        register_patches(clone, run)
        run.kv_modules.append(KVModule(self.job.units))
        clone.add_extra_torch_module_during_sampling(run.kv_modules[-1], cast_to_unet_dtype=False)
        sd_model.forge_objects.unet = clone
        # FaceID's LoRA: hooks on the shared UNet's attention Linears, taken off when the pass ends
        # (the clone Forge discards cannot carry them: its modules are the same objects)
        self.job.attach_loras(clone.model.diffusion_model)
        for text in coexistence_notes(run):
            self.note(text)


def register_patches(patcher: Any, run: ForgeRun) -> None:
    """One attn2 replace patch per cross-attention transformer block, keyed as Forge looks it up.

    Forge tries ``(block, id, depth_index)`` first, then ``(block, id)``. A patch already on either
    key (Forge's built-in IP-Adapter uses the short key for SD1.5) is wrapped, and ours goes on the
    long key, which Forge finds first, so exactly one chain runs per block.

    A patch of ours already there is taken off the chain: Forge calls the per-pass hook twice for
    the hires pass, the first time before it resets the patcher, so the first pass's patches are
    still on it. Chaining them would double the image term (and report a foreign patch).
    """
    slots, _ = attn2_slots(patcher.model.diffusion_model)
    table = patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for slot in slots:
        long_key = (slot.block, slot.block_id, slot.depth_index)
        previous = table.get(long_key, table.get((slot.block, slot.block_id)))
        while isinstance(previous, Attn2Patch):  # our own, from this job's previous pass: replaced, not chained
            previous = previous.previous
        if previous is not None:
            name = type(previous).__name__
            run.chained[name] = run.chained.get(name, 0) + 1
        patch = Attn2Patch(slot.key_index, run, previous)
        patcher.set_model_attn2_replace(patch, slot.block, slot.block_id, slot.depth_index)


def coexistence_notes(run: ForgeRun) -> list[str]:
    notes = []
    for name, layers in sorted(run.chained.items()):
        who = "Forge's built-in IP-Adapter (ControlNet)" if name == BUILTIN_PATCH else f"another attn2 patch ({name})"
        notes.append(
            f"IP-Adapter: {who} is also active on {layers} cross-attention layers; both apply, "
            "their image terms add up like two IP-Adapter units."
        )
    return notes


def _sigma_ranges(patcher: Any, units: list) -> list[tuple[float, float]]:
    """(sigma at start, sigma at end) per unit, for UNet calls the denoiser did not report."""
    predictor = getattr(patcher.model, "predictor", None)
    if predictor is None:
        return [(float("inf"), 0.0) for _ in units]
    return [(float(predictor.percent_to_sigma(u.start)), float(predictor.percent_to_sigma(u.end))) for u in units]


def process(p: Any, args: tuple) -> None:
    new_state(p, args, ForgeState)


def before_sampling(p: Any) -> None:
    state: ForgeState | None = get_state(p)
    if state is None:
        return
    # Forge resets the patcher each pass; what is left to undo is FaceID's LoRA hooks
    wrap_sampler(p, state, lambda live: live.end_pass(p))
    if state.error is not None or state.skip_hires(p):
        return
    prepare_or_record(state, lambda: state.follow_inpaint_area(p) and state.patch(p.sd_model))
    state.check_double_lora(p)


def on_cfg_denoiser(params: Any) -> None:
    state: ForgeState | None = get_state(getattr(params.denoiser, "p", None))
    if not isinstance(state, ForgeState) or state.job is None:
        return
    sigma = params.sigma
    state.clock.report(
        float(sigma.reshape(-1)[0]) if hasattr(sigma, "reshape") else float(sigma), step_progress(params)
    )


def postprocess(p: Any, processed: Any = None) -> None:
    state: ForgeState | None = get_state(p)
    if state is not None and state.job is not None:
        state.job.detach_loras()
    if state is not None and processed is not None:
        append_maps(p, processed, state)
        append_faces(processed, state)
    if state is not None:
        state.release()  # the patched clone Forge keeps until the next generation holds the runs
    end_generation(p)


def register_callbacks() -> None:
    """Once, at script import."""
    from modules import script_callbacks

    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="ipadapter_cfg_denoiser")
    register_common(script_callbacks, current_placement)
