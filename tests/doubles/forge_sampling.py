"""Doubles of Forge's sampling path, in behaviour, from lllyasviel/stable-diffusion-webui-forge at
dfdcbab6 (own implementations, no Forge code):

* ``modules/processing.py``: before each pass ``forge_objects`` is reset to a shallow copy of
  ``forge_objects_after_applying_lora``, a new sampler is made, then the scripts'
  ``process_before_every_sampling`` runs (its exceptions logged, not raised). For the hires pass
  ``sample_hr_pass`` calls it twice: once *before* that reset, on the first pass's objects (with
  the hires sampler already made), then again after it.
* ``modules/sd_samplers_cfg_denoiser.py``: ``on_cfg_denoiser`` gets (x, sigma, step, total) before
  the model runs; before it, ``sd_samplers_common.apply_refiner(self, x)``: past the switch point,
  ``sampling_cleanup`` of the current UNet, ``forge_model_reload`` (a **new** model object with its
  own, unpatched ``forge_objects``, set as ``shared.sd_model``, ``model_loaded_callback``), the
  refiner's conds (``setup_conds``), then ``sampling_prepare`` of the refiner's UNet patcher. The
  model the denoiser runs is read from ``shared.sd_model`` on every call (``inner_model``).
* ``modules/sd_samplers_kdiffusion.py``: ``sample``/``sample_img2img`` start with
  ``sampling_prepare(forge_objects.unet, x)`` (backend/sampling double: memory management loads
  the patcher and its extra patchers to ``load_device``) and end with ``sampling_cleanup``.
  Latents and conds live on ``devices.device`` (the fake GPU of tests/doubles/fake_gpu.py in some
  tests), sigmas too.
* ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``: conds and unconds become
  chunks of B rows; ``transformer_options`` is a shallow copy of the patcher's, plus
  ``cond_or_uncond`` (one 0/1 per chunk, uncond first when both fit in one call, since Forge
  batches the list in reverse) and ``sigmas``; the UNet runs once per batch of chunks.

The Forge 1 family (:data:`FORGE1`; reForge main 3b56b268, Forge Classic 1f95d717) runs the same
path with three differences, each a field of :class:`Flavour`: ``ldm_patched``'s UNet forward
(forge1_patcher.py), the sigmas of the model's ``model_sampling``, and a hires pass that calls the
hook once, after the reset (``modules/processing.py`` ``sample_hr_pass``); its
``ldm_patched/modules/samplers.py`` ``calc_cond_batch`` also adds ``uuids`` to the options.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from modules import script_callbacks, shared

from tests.doubles.forge_backend import forge_unet_forward
from tests.doubles.webui_sampling import processed_images


@dataclass(frozen=True)
class Flavour:
    """What differs between the Forge families' sampling paths."""

    forward: Callable  # (unet, x, timesteps, context, transformer_options) → output
    sigma_at: Callable  # (model, timestep: float) → sigma
    hook_before_reset: bool  # the hires pass calls process_before_every_sampling before the reset too
    extra_options: tuple[str, ...] = ()  # further keys calc_cond_batch puts in transformer_options
    #: the module with the host's ``sampling_prepare``/``sampling_cleanup``
    sampler_module: str = "backend.sampling.sampling_function"
    #: the refiner switch runs ``process_before_every_sampling`` on the new model (ersatzForge
    #: fca12a2's ``sd_samplers_common.apply_refiner``; Forge dfdcbab6's does not)
    hook_at_refiner: bool = False


FORGE2 = Flavour(forge_unet_forward, lambda model, t: model.predictor.sigma(t), hook_before_reset=True)
ERSATZ = replace(FORGE2, hook_at_refiner=True)


def forge1_flavour(precision_argument: bool = True) -> Flavour:
    """reForge (``precision_argument``) or Forge Classic."""
    from tests.doubles.forge1_patcher import forge1_unet_forward

    return Flavour(
        forge1_unet_forward(precision_argument),
        lambda model, t: float(model.model_sampling.sigma(torch.tensor(t))),
        hook_before_reset=False,
        extra_options=("uuids",),
        sampler_module="modules_forge.forge_sampler",
    )


#: How chunks are put into UNet calls: Forge's memory check decides between one call and several.
BATCHINGS = {
    "joint": [[1, 0]],  # both fit: the reversed list, uncond chunk first
    "split": [[1], [0]],  # one chunk per call
    "cond_first": [[0, 1]],  # not produced by dfdcbab6, accepted anyway
}


class ForgeObjects:
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


class ForgeModel:
    """``ForgeDiffusionEngine``: no ``.model``; the UNet lives in ``forge_objects.unet``."""

    def __init__(self, patcher, sdxl: bool = False, info=None):
        self.forge_objects = ForgeObjects(patcher)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sd1, self.is_sd2, self.is_sdxl, self.is_sd3 = not sdxl, False, sdxl, False
        self.sd_checkpoint_info = info


def apply_refiner(denoiser, x) -> bool:
    """Forge's ``sd_samplers_common.apply_refiner`` (switch by sampling steps)."""
    p = denoiser.p
    sampler = importlib.import_module(p.flavour.sampler_module)
    sampling_prepare, sampling_cleanup = sampler.sampling_prepare, sampler.sampling_cleanup
    if p.refiner_switch_at is not None and denoiser.step / denoiser.total_steps < p.refiner_switch_at:
        return False
    info = p.refiner_checkpoint_info
    if info is None or shared.sd_model.sd_checkpoint_info is info:
        return False
    p.extra_generation_params["Refiner"] = info.short_title
    sampling_cleanup(shared.sd_model.forge_objects.unet)
    refiner = info.build()  # forge_model_reload: a new model, nothing of the old one carried over
    shared.sd_model = refiner
    script_callbacks.model_loaded_callback(refiner)
    p.sd_model = shared.sd_model  # ``p.sd_model`` is a property over ``shared.sd_model``
    if p.flavour.hook_at_refiner:
        p.before_every_sampling(x)
    p.setup_conds()
    sampling_prepare(shared.sd_model.forge_objects.unet, x=x)
    return True


@dataclass
class Call:
    cond_or_uncond: list[int]
    x: torch.Tensor
    context: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    out: torch.Tensor


class Denoiser:
    def __init__(self, p, total):
        self.p, self.step, self.total_steps, self.calls = p, 0, total, []

    def model(self, x, sigma, chunks, cond, uncond):
        patcher = shared.sd_model.forge_objects.unet
        to = dict(patcher.model_options.get("transformer_options", {}))
        to["cond_or_uncond"] = list(chunks)
        if "uuids" in self.p.flavour.extra_options:
            to["uuids"] = [f"uuid-{c}" for c in chunks]
        to["sigmas"] = sigma
        x_in = torch.cat([x] * len(chunks))
        context = torch.cat([uncond if c else cond for c in chunks])
        t = torch.cat([(sigma * 10).long()] * len(chunks))
        out = self.p.flavour.forward(patcher.model.diffusion_model, x_in, t, context, to)
        self.calls.append(Call(list(chunks), x_in.cpu(), context.cpu(), t.cpu(), sigma.cpu(), out.cpu()))
        return out.chunk(len(chunks))

    def forward(self, x, sigma, cond, uncond, skip_uncond=False):
        if self.step == self.p.fail_at_step:
            raise RuntimeError(f"sampling failed at step {self.step} (test)")
        if apply_refiner(self, x):
            cond, uncond = self.p.conds
        params = script_callbacks.CFGDenoiserParams(x, None, sigma, self.step, self.total_steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        outs = {}
        for chunks in [[0]] if skip_uncond else BATCHINGS[self.p.batching]:
            for c, o in zip(chunks, self.model(x, sigma, chunks, cond, uncond), strict=True):
                outs[c] = o
        self.step += 1
        if skip_uncond:
            return outs[0]
        return outs[1] + 5.0 * (outs[0] - outs[1])


class Sampler:
    def __init__(self, p):
        self.p, self.denoiser = p, None

    def _loop(self, x, cond, uncond):
        sampler = importlib.import_module(self.p.flavour.sampler_module)
        sampling_prepare, sampling_cleanup = sampler.sampling_prepare, sampler.sampling_cleanup
        unet_patcher = shared.sd_model.forge_objects.unet
        sampling_prepare(unet_patcher, x=x)
        model = unet_patcher.model
        steps = self.p.steps
        self.denoiser = Denoiser(self.p, steps)
        ts = torch.linspace(999, 100, steps)
        for i in range(steps):
            sigma = torch.full((x.shape[0],), self.p.flavour.sigma_at(model, float(ts[i])), device=x.device)
            denoised = self.denoiser.forward(x, sigma, cond, uncond, skip_uncond=i in self.p.skip_uncond_steps)
            x = x + 0.1 * (denoised - x)
        sampling_cleanup(unet_patcher)
        return x

    def sample(self, p, x, conditioning, unconditional_conditioning, image_conditioning=None):
        return self._loop(x, conditioning, unconditional_conditioning)

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        return self._loop(x + 0.5 * noise, conditioning, unconditional_conditioning)


@dataclass
class ForgeProcessing:
    sd_model: object
    cond: torch.Tensor  # [B, T, ctx]
    uncond: torch.Tensor
    batch: int = 1
    latent: int = 8
    steps: int = 3
    batching: str = "joint"
    enable_hr: bool = False
    skip_uncond_steps: set = field(default_factory=set)
    is_hr_pass: bool = False
    is_api: bool = False
    sampler: Sampler | None = None
    samplers: list = field(default_factory=list)
    extra_generation_params: dict = field(default_factory=dict)
    iteration: int = 0
    processed: object = None  # what postprocess received (set by run_forge_job)
    #: The refiner: an object whose ``build()`` gives the refiner's ``ForgeModel``; the step fraction it takes over at.
    refiner_checkpoint_info: object = None
    refiner_switch_at: float | None = None
    refiner_cond: torch.Tensor | None = None  # the refiner's conds when its context width differs
    refiner_uncond: torch.Tensor | None = None
    conds: tuple = ()
    flavour: Flavour = FORGE2
    before_every_sampling: Callable = lambda x: None  # the scripts' hook, set by run_forge_job
    fail_at_step: int | None = None  # the denoiser raises there (an interrupt, an OOM, another extension)

    @property
    def batch_size(self) -> int:
        return self.batch

    def setup_conds(self) -> None:
        """The loaded model's conds, on the device (its text encoder's output in Forge)."""
        from modules import devices

        cond, uncond = self.cond, self.uncond
        width = _context_width(shared.sd_model.forge_objects.unet.model.diffusion_model)
        if self.refiner_cond is not None and cond.shape[-1] != width:
            cond, uncond = self.refiner_cond, self.refiner_uncond
        self.conds = (cond.to(devices.device), uncond.to(devices.device))


def _context_width(unet) -> int:
    return next(m for n, m in unet.named_modules() if n.endswith("attn2")).to_k.in_features


def run_forge_job(script, args, p: ForgeProcessing, errors: list[str] | None = None):
    errors = [] if errors is None else errors

    def hook(x):
        try:
            script.process_before_every_sampling(p, *args, x=x, noise=x, c=p.cond, uc=p.uncond)
        except Exception:
            errors.append(traceback.format_exc())

    p.before_every_sampling = hook

    def new_pass(x, hires=False):
        if hires and p.flavour.hook_before_reset:  # Forge 2's sample_hr_pass: once more *before* the reset
            p.sampler = Sampler(p)
            p.samplers.append(p.sampler)
            hook(x)
        p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        if not hires or not p.flavour.hook_before_reset:
            p.sampler = Sampler(p)
            p.samplers.append(p.sampler)
        hook(x)

    from modules import devices

    shared.sd_model = p.sd_model
    try:
        script.process(p, *args)
    except Exception:
        errors.append(traceback.format_exc())
    p.setup_conds()
    x = torch.randn(p.batch, 4, p.latent, p.latent, generator=torch.Generator().manual_seed(0)).to(devices.device)
    new_pass(x)
    samples = p.sampler.sample(p, x, *p.conds)
    if p.enable_hr:
        p.is_hr_pass = True
        p.sd_model = shared.sd_model
        p.setup_conds()
        new_pass(torch.nn.functional.interpolate(samples, scale_factor=2), hires=True)
        samples = p.sampler.sample_img2img(p, torch.nn.functional.interpolate(samples, scale_factor=2),
                                           torch.zeros_like(torch.nn.functional.interpolate(samples, scale_factor=2)),
                                           *p.conds)  # fmt: skip
        p.is_hr_pass = False
    p.processed = processed_images(samples)
    script.postprocess(p, p.processed, *args)
    return samples.cpu()
