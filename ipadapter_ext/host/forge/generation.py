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
* ``on_cfg_denoiser`` reports each step's sigma and step fraction to the patches, and follows a
  refiner switch: Forge's ``apply_refiner`` (at the top of the CFG denoiser's forward, before this
  callback) loads the refiner as a new model whose ``forge_objects.unet`` is unpatched, and has
  already loaded it for sampling. When the units fit the refiner, its patcher is cloned and patched
  the same way and loaded again through Forge's ``sampling_prepare`` (so the K/V module is in
  memory management's hands), and the FaceID LoRA moves to its UNet; otherwise the units stop
  there, with a console line.
* A unit that cannot apply raises when sampling starts (HTTP 422 for the API), as on A1111.
* Flux (XLabs and InstantX adapters, Redux): the same, with object patches on the blocks and a
  unet function wrapper instead of attn2 patches (``flux.py``, ``flux_context.py``). The pass's
  patches go inert when it ends, so leftovers on the model never act for another request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...core.errors import IPAdapterError
from ...ui.infotext import KEY
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
from ..unet import attn2_slots, is_flux, model_signature
from . import flux as forge_flux
from .attn2_patch import Attn2Patch, ForgeRun, KVModule, StepClock
from .flux_context import ContextUnits, attention_namespace
from .loaded_models import forget
from .placement import current_placement, forge_placement
from .readers import FORGE2, Readers

#: patch classes of the hosts' built-in image prompts (extensions-builtin/sd_forge_ipadapter: in every
#: Forge family ``lib_ipadapter``'s ``CrossAttentionPatch``; in ersatzForge also PuLID's ``Attn2Replace``)
BUILTIN_PATCHES = {
    "CrossAttentionPatch": "the WebUI's built-in IP-Adapter (a ControlNet unit)",
    "Attn2Replace": "PuLID (the WebUI's built-in sd_forge_ipadapter, or an extension)",
}


@dataclass
class ForgeState(StateBase):
    clock: StepClock = field(default_factory=StepClock)
    #: The patched clone this pass samples with; ``None`` outside a pass or once the units stopped
    #: (a refiner they do not fit).
    patched: Any = None
    #: The model object whose UNet was patched. Another model object means a refiner switch (Forge
    #: loads the refiner as a new model); another patcher on the same model does not: a script
    #: after us (ControlNet, another patching extension) clones our clone, which keeps our patches.
    patched_model: Any = None
    flux_run: forge_flux.FluxRun | None = None
    run: ForgeRun | None = None
    runs: list[ForgeRun] = field(default_factory=list)  # this generation's passes, released at its end

    def release(self) -> None:
        self.forget_loaded()
        for run in self.runs:
            run.release()
        self.runs = []

    def forget_loaded(self) -> None:
        """Take this generation's K/V modules off the host's list of loaded models: the host never
        does (``loaded_models.py``), and each generation hands it new ones."""
        handed = [module for run in self.runs for module in run.handed]
        if handed:
            forget(self.readers.loaded_models(), handed)

    def count_run(self) -> None:
        """Fold the last pass's step counts into the generation's."""
        if self.run is not None:
            self.count_uncond(self.run.steps_seen, self.run.uncond_skipped_steps)
            self.run = None

    #: what differs between the patcher families (kernel, schedule, dtype); Forge 1 sets its own
    readers: ClassVar[Readers] = FORGE2

    def end_pass(self, p: Any) -> None:
        self.patched = None
        self.forget_loaded()  # the pass's sampler is done with them (also after an exception)
        if self.job is not None:
            self.job.detach_loras()
        self.close_flux_run()
        self.keep_maps(p)

    def close_flux_run(self) -> None:
        if self.flux_run is not None:
            self.flux_run.close()
            self.flux_run = None

    def patch(self, sd_model: Any) -> None:
        """Prepare (or reuse) the job, then clone-patch-set the UNet patcher of this pass."""
        patcher = sd_model.forge_objects.unet
        flux = is_flux(patcher.model.diffusion_model)
        if flux and self.readers.no_flux:
            raise IPAdapterError(self.readers.no_flux)
        signature = model_signature(sd_model)
        place = forge_placement(patcher, self.readers.dtype(patcher))
        requests, seeds = self.prepared_requests()
        key = (signature, place.device, place.dtype, seeds)
        if self.job is not None and key != self.key and (problem := self.fits(signature)) is not None:
            # a later pass on another model (the refiner still loaded): skipped, like a refiner switch
            self.note(f"IP-Adapter: not applied to {signature.family} in this pass: {problem}")
            return
        if self.job is None or key != self.key:
            self.job = engine().prepare(requests, signature, place)
            self.key = key
        self.log_units()
        self.clock = StepClock()  # a new pass: no step reported yet
        self.start_maps()
        self.apply(sd_model)

    def apply(self, sd_model: Any) -> None:
        """Clone the model's UNet patcher, put the job's units on the clone, set it back."""
        assert self.job is not None
        patcher = sd_model.forge_objects.unet
        ranges = _sigma_ranges(self.readers.schedule(patcher), self.job.units)
        run = ForgeRun(self.job.units, ranges, self.clock, self.job.upcast, self.maps, attention=self.readers.attention)
        run.per_image_refs = self.job.per_image_refs
        self.count_run()
        self.run = run
        self.runs.append(run)
        if is_flux(patcher.model.diffusion_model):
            self.close_flux_run()  # an earlier pass's patches, if still on the model, stay inert
            context = None
            if self.job.context:
                ranges = _sigma_ranges(self.readers.schedule(patcher), self.job.context)
                context_run = ForgeRun(self.job.context, ranges, self.clock)  # type: ignore[arg-type]
                context = ContextUnits(
                    self.job.context, context_run, attention_namespace(patcher.model.diffusion_model)
                )
            sampled = lambda: sd_model.forge_objects.unet  # noqa: E731  (the last script's clone)
            clone, self.flux_run = forge_flux.patched_clone(patcher, run, context, sampled)
            sd_model.forge_objects.unet = self.patched = clone
            self.patched_model = sd_model
            return
        clone = patcher.clone()
        register_patches(clone, run)
        run.handed.append(KVModule(self.job.units))
        clone.add_extra_torch_module_during_sampling(run.handed[-1], cast_to_unet_dtype=False)
        sd_model.forge_objects.unet = self.patched = clone
        self.patched_model = sd_model
        # FaceID's LoRA: hooks on the shared UNet's attention Linears, taken off when the pass ends
        # (the clone Forge discards cannot carry them: its modules are the same objects). Their
        # weights, cast to the UNet's dtype on its device, are memory Forge is told to keep free.
        self.job.attach_loras(clone.model.diffusion_model)
        lora_bytes = sum(
            u.lora.nbytes(forge_placement(clone, self.readers.dtype(clone)).dtype)
            for u in self.job.units
            if u.applies_lora and u.lora
        )
        if lora_bytes:
            clone.add_extra_preserved_memory_during_sampling(lora_bytes)
        for text in coexistence_notes(run):
            self.note(text)

    def switch_model(self, sd_model: Any, x: Any) -> None:
        """The refiner replaced the model mid-sampling: patch its UNet too when the units fit it,
        and have Forge load that clone (with the K/V module) as it loads every pass's clone."""
        assert self.job is not None
        signature = model_signature(sd_model)
        problem = self.fits(signature)
        if problem is not None:
            self.patched = None
            self.job.detach_loras()
            self.note(f"IP-Adapter: not applied after the switch to {signature.family}: {problem}")
            return
        self.apply(sd_model)
        self.readers.prepare(sd_model.forge_objects.unet, x)
        self.note_refiner(signature.family)

    def note_refiner(self, family: str) -> None:
        self.note(f"IP-Adapter: applied to the refiner ({family}) too.")


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
        who = BUILTIN_PATCHES.get(name, f"another attn2 patch ({name})")
        notes.append(
            f"IP-Adapter: {who} is also active on {layers} cross-attention layers; both apply, this extension's "
            "units after it, and their image terms add up like two IP-Adapter units."
        )
    return notes


def _sigma_ranges(schedule: Any, units: list) -> list[tuple[float, float]]:
    """(sigma at start, sigma at end) per unit, for UNet calls the denoiser did not report; from the
    model's sigma schedule (the family's ``readers.schedule``)."""
    if schedule is None or not hasattr(schedule, "percent_to_sigma"):
        return [(float("inf"), 0.0) for _ in units]
    return [(float(schedule.percent_to_sigma(u.start)), float(schedule.percent_to_sigma(u.end))) for u in units]


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
    state.take_seeds(p)
    before = state.patched_model
    prepare_or_record(state, lambda: state.follow_inpaint_area(p) and state.patch(p.sd_model))
    if before is not None and state.patched_model is not before and is_refiner_pass(p):
        # ersatzForge runs this hook at the refiner switch itself, so on_cfg_denoiser sees no switch
        state.note_refiner(model_signature(p.sd_model).family)
    state.check_double_lora(p)
    note_context_tokens(p, state)


def is_refiner_pass(p: Any) -> bool:
    """The model about to sample is the generation's refiner."""
    info = getattr(p, "refiner_checkpoint_info", None)
    return info is not None and getattr(p.sd_model, "sd_checkpoint_info", None) == info


def note_context_tokens(p: Any, state: ForgeState) -> None:
    """Redux units: the infotext says how many context tokens each added."""
    if state.job is None:
        return
    for unit in state.job.context:
        key = KEY.format(unit.number)
        text = p.extra_generation_params.get(key)
        if isinstance(text, str) and "context_tokens:" not in text:
            p.extra_generation_params[key] = f"{text}, context_tokens: {unit.num_tokens}"


def on_cfg_denoiser(params: Any) -> None:
    p = getattr(params.denoiser, "p", None)
    state: ForgeState | None = get_state(p)
    if not isinstance(state, ForgeState) or state.job is None:
        return
    model = p.sd_model  # Forge: a property over ``shared.sd_model``, the model the denoiser runs
    if state.patched is not None and model is not state.patched_model:  # a refiner was loaded
        state.switch_model(model, params.x)
    sigma = params.sigma
    state.clock.report(
        float(sigma.reshape(-1)[0]) if hasattr(sigma, "reshape") else float(sigma), step_progress(params)
    )


def postprocess(p: Any, processed: Any = None) -> None:
    state: ForgeState | None = get_state(p)
    if state is not None:
        state.close_flux_run()
    if state is not None and state.job is not None:
        state.job.detach_loras()
        state.count_run()
        state.note_precise(p)
    if state is not None and processed is not None:
        append_maps(p, processed, state)
        append_faces(processed, state)
    if state is not None:
        state.release()  # the patched clone Forge keeps until the next generation holds the runs
    end_generation(p)


def register_callbacks() -> None:
    """Once, at script import."""
    from modules import script_callbacks

    register(script_callbacks.on_cfg_denoiser, on_cfg_denoiser, "ipadapter_cfg_denoiser")
    register_common(script_callbacks, current_placement)
