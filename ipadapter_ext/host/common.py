"""What both hosts (A1111 and Forge) do identically: script arguments to unit requests, the
infotext, errors raised from the sampler (HTTP 422 for API requests), the once-per-generation
console lines, and the callbacks for settings, routes and the X/Y/Z plot.

Only how the image term reaches the UNet differs: torch hooks on A1111 (``a1111/``), attn2
replace patches on Forge (``forge/``). Keeping the rest here means a unit behaves the same,
logs the same and fails the same way on either host.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..api.bare_unit import install as install_bare_unit
from ..api.errors import http_error
from ..core.encode.preprocess import CropMode
from ..core.encode.tiles import plan_tiles
from ..core.engine import UnitRequest
from ..core.errors import IPAdapterError
from ..core.job import Job
from ..core.load.compat import check_unet
from ..interop.xyz import apply_overrides, register_xyz_axes
from ..schema import DEFAULTS, with_default_weight
from ..ui.args import parse_script_args
from ..ui.infotext import KEY, unit_infotext
from .callbacks import register
from .face_preprocessors import register_face_preprocessors
from .heap_trim import trim_heap
from .img2img_inputs import resolve as resolve_img2img
from .inpaint_area import follow_inpaint_area
from .models import (
    after_generation,
    cache_size_changed,
    engine,
    folders_changed,
    free_memory,
    generation_queue,
    loaded_signature,
    model_hash,
)
from .settings import opt, register_settings

log = logging.getLogger("ipadapter")

STATE_ATTR = "ipadapter_state"
#: The separate FaceID LoRA files (``ip-adapter-faceid…_lora.safetensors``) in the WebUI's tag syntax.
_FACEID_LORA_TAG = re.compile(r"<lora:[^:>]*faceid[^:>]*:[^>]*>", re.IGNORECASE)


@dataclass
class StateBase:
    """One generation's units and outcome; a host subclass adds how it applies them."""

    requests: list[UnitRequest]
    error: IPAdapterError | None = None
    job: Job | None = None
    key: tuple | None = None
    logged: bool = False
    notes: set[str] = field(default_factory=set)
    #: Attention maps: wanted (the request's switch), and the last pass's maps per batch iteration
    #: → unit number → image index in the batch.
    maps: bool = False
    drawn: dict[int, dict[int, dict[int, Any]]] = field(default_factory=dict)
    inpaint_checked: bool = False
    #: The current batch's seeds (``p.seeds``), for the units whose uncond noise draws from them.
    seeds: tuple[int, ...] = ()
    #: Precise weight types: denoiser calls seen and those that skipped the uncond pass, over the passes.
    steps_seen: int = 0
    uncond_skipped: int = 0

    def __post_init__(self) -> None:
        self.maps = any(r.attention_map for r in self.requests)

    def follow_inpaint_area(self, p: Any) -> bool:
        """Once ``p.init`` has run: fit unit masks to an "Only masked" inpaint region. Returns
        whether any unit is left to apply."""
        if not self.inpaint_checked:
            self.inpaint_checked = True
            self.requests = follow_inpaint_area(p, self.requests, self.note)
        return bool(self.requests)

    def start_maps(self) -> None:
        """A sampling pass begins: fresh accumulators, so hires fix shows its final pass. Without
        maps nothing is set, and the per-step path records nothing."""
        if self.maps and self.job is not None:
            from ..core.attend.attention_map import UnitMap

            for unit in self.job.units:
                unit.attention_map = UnitMap()

    def keep_maps(self, p: Any) -> None:
        """A sampling pass ended: its maps are this batch iteration's (a later pass replaces them).
        A unit that added nothing (weight 0, not active) gets all-zero maps: shown blank."""
        if self.maps and self.job is not None:
            images = range(int(getattr(p, "batch_size", 1) or 1))
            self.drawn[int(getattr(p, "iteration", 0))] = {
                u.number: u.attention_map.maps(images) for u in self.job.units if u.attention_map is not None
            }

    def check_double_lora(self, p: Any) -> None:
        """A FaceID unit applies the LoRA its file carries; the same LoRA published as a separate
        ``*faceid*_lora`` file in the prompt would apply it a second time."""
        if self.job is None or not any(u.applies_lora for u in self.job.units):
            return
        prompts = getattr(p, "all_prompts", None) or [getattr(p, "prompt", "") or ""]
        tags = sorted({m.group(0) for text in prompts for m in _FACEID_LORA_TAG.finditer(str(text))})
        if tags:
            self.note(
                f"IP-Adapter: the prompt has {', '.join(tags)}, and the FaceID unit already applies the LoRA its "
                "model file carries, so the LoRA is applied twice. Remove the tag, or set the unit's LoRA "
                "strength to 0."
            )

    def fits(self, signature: Any) -> IPAdapterError | None:
        """Why the prepared units cannot apply to a UNet of ``signature`` (``None``: they fit),
        for a model loaded after they were prepared (the refiner)."""
        assert self.job is not None
        try:
            for unit in self.job.units:
                check_unet(unit.adapter.info, signature, unit.adapter.name)
        except IPAdapterError as exc:
            return exc
        return None

    def take_seeds(self, p: Any) -> None:
        """Before each pass: the seeds of the batch about to be sampled."""
        self.seeds = batch_seeds(p)

    def prepared_requests(self) -> tuple[list[UnitRequest], tuple]:
        """The requests with this batch's seeds, and what of them the prepared job depends on (a
        new batch with other seeds needs new uncond tokens only when a unit's noise is seeded)."""
        if not any(r.seeded_noise for r in self.requests):
            return self.requests, ()
        return [dataclasses.replace(r, seeds=self.seeds) for r in self.requests], self.seeds

    def count_uncond(self, seen: int, skipped: int) -> None:
        self.steps_seen += seen
        self.uncond_skipped += skipped

    def note_precise(self, p: Any) -> None:
        """The precise weight types act through the uncond side, which does nothing at CFG scale 1
        and is not computed where the sampler skips it (negative guidance minimum sigma, skip
        early CFG, Forge at CFG 1): say so, once, instead of a silently weaker result."""
        units = [u for u in self.job.units if u.acts_on_uncond] if self.job is not None else []
        if not units:
            return
        who = ", ".join(f"unit {u.number} ('{u.weight_type}')" for u in units)
        cfg = getattr(p, "cfg_scale", None)
        if cfg is not None and float(cfg) == 1.0:
            self.note(
                f"IP-Adapter: {who} moves the reference to the negative (uncond) side on some layers; at CFG scale 1 "
                "the uncond has no effect, so that precise part does nothing. Raise the CFG scale."
            )
        elif self.uncond_skipped:
            self.note(
                f"IP-Adapter: {who} moves the reference to the negative (uncond) side on some layers, but the sampler "
                f"skipped the uncond pass on {self.uncond_skipped} of {self.steps_seen} steps (negative guidance "
                "minimum sigma, skip early CFG, or CFG scale 1): the precise part had no effect on those steps."
            )

    def note(self, text: str) -> None:
        """Print ``text`` once per generation (the WebUI console is where users look)."""
        if text not in self.notes:
            self.notes.add(text)
            print(text)

    def log_units(self) -> None:
        if not self.logged and self.job is not None:
            self.logged = True
            for unit in (*self.job.units, *self.job.context):
                print(unit.log_line())

    def skip_hires(self, p: Any) -> bool:
        """The hires pass with the "apply on hires" setting off."""
        if getattr(p, "is_hr_pass", False) and not opt("ipadapter_hires", True):
            self.note("IP-Adapter: not applied on the hires pass (setting).")
            return True
        return False


def parse_requests(p: Any, args: tuple) -> tuple[list[UnitRequest], IPAdapterError | None]:
    """Script arguments (UI layout or API unit objects) → unit requests, with the default weight
    setting and X/Y/Z overrides applied and one infotext entry per unit written to ``p``."""
    try:
        units = parse_script_args(args)
        default_weight = float(opt("ipadapter_default_weight", DEFAULTS.weight))
        units = [(n, with_default_weight(u, default_weight)) for n, u in units]
        units = apply_overrides(p, units)  # X/Y/Z plot axes
        resolved = [resolve_img2img(p, unit.to_request(number)) for number, unit in units]
    except IPAdapterError as exc:
        return [], exc
    requests = [r for r in resolved if r is not None]
    for (number, unit), request in zip(units, resolved, strict=True):
        if request is not None and unit.per_batch_image:
            error = _per_batch_count(p, number, len(request.images))
            if error is not None:
                return [], error
    for (number, unit), request in ((u, r) for u, r in zip(units, resolved, strict=True) if r is not None):
        infotext = unit_infotext(unit, model_hash(unit.model), len(request.images), tiles_text(request))
        p.extra_generation_params[KEY.format(number)] = infotext
    return requests, None


def tiles_text(request: UnitRequest) -> str | None:
    """How a tiled unit's (first) reference is cut, for the infotext: "3 across", "2 down"."""
    if request.crop != CropMode.TILES.value or not request.images:
        return None
    image = request.images[0]
    width, height = image.size if isinstance(image, Image.Image) else image.shape[1::-1]
    return plan_tiles(int(width), int(height)).describe()


def batch_seeds(p: Any) -> tuple[int, ...]:
    """The seed of each image of the batch being sampled (A1111 and Forge set ``p.seeds`` per batch)."""
    seeds = getattr(p, "seeds", None)
    if seeds:
        return tuple(int(s) for s in seeds)
    return (int(getattr(p, "seed", 0) or 0),)


def _per_batch_count(p: Any, number: int, images: int) -> IPAdapterError | None:
    batch = int(getattr(p, "batch_size", 1) or 1)
    if images == batch:
        return None
    return IPAdapterError(
        f"IP-Adapter unit {number}: per_batch_image gives each image of the batch its own reference, but the unit has "
        f"{images} reference image(s) for a batch size of {batch}. Give exactly {batch} (one per image, in order), or "
        "set the batch size to match."
    )


def new_state(p: Any, args: tuple, factory: Callable[..., StateBase]) -> None:
    """``process``: replace any state left on ``p`` by this job's (none when no unit is on)."""
    drop_state(p)
    requests, error = parse_requests(p, args)
    if error is not None:
        setattr(p, STATE_ATTR, factory([], error=error))
    elif requests:
        setattr(p, STATE_ATTR, factory(requests))


def get_state(p: Any) -> Any:
    return getattr(p, STATE_ATTR, None)


def drop_state(p: Any) -> None:
    if hasattr(p, STATE_ATTR):
        delattr(p, STATE_ATTR)


def end_generation(p: Any) -> None:
    """``postprocess``: the job's state goes, the caches are emptied when the settings say so, and
    after a generation with units the heap's freed memory goes back to the OS (``heap_trim.py``)."""
    had_units = get_state(p) is not None
    drop_state(p)
    after_generation()
    if had_units:
        trim_heap()


def failed_to_prepare(exc: Exception) -> IPAdapterError:
    """A bug must never turn into a silent generation without the unit: it becomes the error."""
    return IPAdapterError(f"IP-Adapter failed to prepare: {type(exc).__name__}: {exc}")


def prepare_or_record(state: StateBase, prepare: Callable[[], None]) -> None:
    """Run ``prepare``; any failure becomes ``state.error``, raised when sampling starts."""
    try:
        prepare()
    except IPAdapterError as exc:
        state.error = exc
    except Exception as exc:
        log.exception("IP-Adapter failed to prepare")
        state.error = failed_to_prepare(exc)


def wrap_sampler(p: Any, state: StateBase, after: Callable[[Any], None] | None = None) -> None:
    """Wrap this job's sampler instance (not its class): a unit that cannot apply raises when
    sampling starts (script hooks' own exceptions are only logged by the WebUI), as HTTP 422 with
    the message as ``detail`` for an API request; ``after(state)`` runs in a ``finally``.

    The wrapper holds the state weakly: ``p`` holds it for the generation, and the job (its K/V,
    on the GPU where the UNet runs) must go when ``postprocess`` drops it. The sampler sits in
    reference cycles (with its denoiser, and with ``p``), so a strong reference here kept every
    generation's K/V until Python's cycle collector ran (the soak found 17 generations' K/V
    still held after 30 requests)."""
    sampler = p.sampler
    is_api = bool(getattr(p, "is_api", False))
    ref = weakref.ref(state)
    for name in ("sample", "sample_img2img"):
        if name in vars(sampler) or not hasattr(sampler, name):
            continue
        original = getattr(sampler, name)

        def run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            live = ref()
            if live is not None and live.error is not None:
                raise http_error(live.error) if is_api else live.error
            try:
                return _original(*args, **kwargs)
            finally:
                live = ref()
                if after is not None and live is not None:
                    after(live)

        setattr(sampler, name, run)


def step_progress(params: Any) -> float:
    """Fraction of the sampling steps at this denoiser call, as both hosts' denoisers report it."""
    denoiser = params.denoiser
    total = getattr(denoiser, "total_steps", None) or params.total_sampling_steps or 1
    step = getattr(denoiser, "step", params.sampling_step)
    return step / total


def register_common(script_callbacks: Any, current_placement: Callable[[], Any]) -> None:
    """Settings, HTTP routes and X/Y/Z axes: the same on both hosts.

    Settings and axes are registered right now, at script load, not in ``on_ui_settings`` /
    ``on_before_ui`` alone, because an API-only server (``--nowebui``) runs those too late: it
    imports ``modules.api.models``, whose options schema is frozen from the options known at that
    moment (``/sdapi/v1/options`` answers only those), and builds the scripts' UI inside the API's
    constructor, where the X/Y/Z script snapshots its axis list, both before ``on_before_ui`` and
    before any ``on_ui_settings`` callback. Both registrations are cheap (a few option entries; a
    few axis objects whose model list is read lazily) and idempotent. The plot script, a built-in
    script, is loaded before extensions; ``on_before_ui`` stays for one loaded after this one.
    """
    register_settings(folders_changed, cache_size_changed)

    def app_started(_demo: Any, app: Any) -> None:
        from ..api.routes import register_routes

        register_routes(app, engine, loaded_signature, current_placement, generation_queue, free_memory)
        install_bare_unit(app)

    register(script_callbacks.on_app_started, app_started, "ipadapter_routes")
    register_face_preprocessors(script_callbacks)
    register_xyz()
    if hasattr(script_callbacks, "on_before_ui"):
        register(script_callbacks.on_before_ui, register_xyz, "ipadapter_xyz_axes")


def register_xyz() -> None:
    """The IP-Adapter axes of the X/Y/Z plot script (idempotent; nothing when it is not loaded)."""
    register_xyz_axes(lambda: [e.name for e in engine().registry.adapters() if e.info is not None])
