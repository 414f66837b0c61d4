"""Doubles of the WebUI's sampling path, reduced to what decides the rows the UNet sees.

* ``CFGDenoiser`` mirrors ``modules/sd_samplers_cfg_denoiser.py`` ``CFGDenoiser.forward`` of
  A1111 1.10.1: the ``x_in`` layout (cond rows image by image with AND repeats, then the batch's
  uncond rows), the ``on_cfg_denoiser`` callback before the UNet runs, uncond skipping after the
  callback, and the three ways of splitting rows into UNet calls (``batch_cond_uncond`` on: one
  call; off: chunks of the batch size; cond/uncond token lengths differ without padding: cond in
  chunks of 2B (or B), then one uncond call). It records every UNet call for the tests.
  The forward starts with ``sd_samplers_common.apply_refiner`` (tests/doubles/modules), as the
  real one does, and the UNet is called through the model's wrapper (``apply_model`` →
  ``sd_model.model``), where --medvram's pre-hook sits.
* ``Sampler`` mirrors the ``sample``/``sample_img2img`` entry points of the samplers
  (``modules/sd_samplers_kdiffusion.py``) with a plain Euler-like loop over
  ``sampler_extra_args`` (which the refiner switch replaces). An interrupt
  (``shared.state.interrupted``) raises ``InterruptedException`` at the next denoiser call, and the
  sampler returns the last latent, as ``sd_samplers_common.launch_sampling`` does.
* ``Processing`` and ``run_job`` mirror the script-hook order of ``modules/processing.py``
  (``process`` → conds from the text encoder (``setup_conds``) → per pass
  ``process_before_every_sampling`` → sampler → VAE decode → ``postprocess``), with the
  ``ScriptRunner``'s habit of logging, not raising, exceptions from script hooks. Latents and
  conds live on ``devices.device`` (the fake GPU of tests/doubles/fake_gpu.py in some tests); the
  recorded UNet calls are kept as CPU copies.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from modules import devices, script_callbacks, sd_models, sd_samplers_common, shared


@dataclass
class UNetCall:
    rows: list[int]  # global row indices into x_in
    x: torch.Tensor
    context: torch.Tensor
    timesteps: torch.Tensor
    out: torch.Tensor


class InterruptedException(BaseException):
    """``modules/sd_samplers_common.InterruptedException``: a BaseException, so only the sampler's
    own ``except`` stops it (and every ``finally`` on the way runs)."""


class CFGDenoiser:
    def __init__(self, sampler, unet):
        self.sampler = sampler
        self.p = sampler.p
        self.unet = unet
        self.step = 0
        self.total_steps = sampler.steps
        self.calls: list[UNetCall] = []
        self.layouts: list[int] = []  # cond rows per step

    def _inner(self, x, sigma, context, rows):
        t = (sigma * 100).long()
        out = shared.sd_model.apply_model(x, t, context)
        self.calls.append(UNetCall(rows, x.cpu(), context.cpu(), t.cpu(), out.cpu()))
        return out

    def update_inner_model(self):
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def forward(self, x, sigma, uncond, cond, repeats, cond_scale=5.0, skip_uncond=False):
        state = getattr(shared, "state", None)
        if state is not None and (state.interrupted or state.skipped):
            raise InterruptedException
        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]
        batch = x.shape[0]
        index = torch.repeat_interleave(torch.arange(batch), torch.tensor(repeats))
        x_in = torch.cat([x[index], x])
        sigma_in = torch.cat([sigma[index], sigma])
        params = script_callbacks.CFGDenoiserParams(
            x_in, None, sigma_in, self.step, self.total_steps, cond, uncond, self
        )
        script_callbacks.cfg_denoiser_callback(params)
        x_in, sigma_in, cond, uncond = params.x, params.sigma, params.text_cond, params.text_uncond
        n_cond = cond.shape[0]
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch], sigma_in[:-batch]
        x_out = torch.zeros_like(x_in)
        if cond.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = cond if skip_uncond else torch.cat([cond, uncond])
            step = x_in.shape[0] if shared.opts.batch_cond_uncond else batch
            for a in range(0, x_in.shape[0], step):
                b = a + step
                x_out[a:b] = self._inner(x_in[a:b], sigma_in[a:b], cond_in[a:b], list(range(a, min(b, x_in.shape[0]))))
        else:
            step = batch * 2 if shared.opts.batch_cond_uncond else batch
            for a in range(0, n_cond, step):
                b = min(a + step, n_cond)
                x_out[a:b] = self._inner(x_in[a:b], sigma_in[a:b], cond[a:b], list(range(a, b)))
            if not skip_uncond:
                x_out[-batch:] = self._inner(
                    x_in[-batch:], sigma_in[-batch:], uncond, list(range(n_cond, n_cond + batch))
                )
        out_uncond = (
            x_out[n_cond : n_cond + batch]
            if not skip_uncond
            else x_out[torch.cumsum(torch.tensor([0, *repeats[:-1]]), 0)]
        )
        denoised = out_uncond.clone()
        starts = torch.cumsum(torch.tensor([0, *repeats]), 0)
        for i in range(batch):
            for j in range(starts[i], starts[i + 1]):
                denoised[i] += (x_out[j] - out_uncond[i]) * (cond_scale / repeats[i])
        self.step += 1
        return denoised


class Sampler:
    def __init__(self, p, steps):
        self.p = p
        self.steps = steps
        self.denoiser: CFGDenoiser | None = None
        self.sampler_extra_args: dict = {}

    def _loop(self, x, cond, uncond, steps):
        self.denoiser = CFGDenoiser(self, shared.sd_model.model.diffusion_model)
        self.denoiser.total_steps = steps
        self.sampler_extra_args = {"cond": cond, "uncond": uncond}
        sigmas = torch.linspace(1.0, 0.1, steps, device=x.device)
        state = getattr(shared, "state", None)
        for i in range(steps):
            if state is not None:
                state.sampling_step, state.sampling_steps = i, steps
            sigma = sigmas[i].repeat(x.shape[0])
            skip = i in self.p.skip_uncond_steps
            args = self.sampler_extra_args
            try:
                denoised = self.denoiser.forward(
                    x,
                    sigma,
                    args["uncond"],
                    args["cond"],
                    self.p.repeats,
                    cond_scale=self.p.cfg_scale,
                    skip_uncond=skip,
                )
            except InterruptedException:  # launch_sampling: the last latent is the result
                return x
            x = x + 0.1 * (denoised - x)
        return x

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        return self._loop(x, conditioning, unconditional_conditioning, steps or self.steps)

    def sample_img2img(
        self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None
    ):
        return self._loop(x + noise * 0.5, conditioning, unconditional_conditioning, steps or self.steps)


@dataclass
class Processing:
    """The attributes of StableDiffusionProcessing that the extension and these doubles read."""

    sd_model: object
    cond: torch.Tensor
    uncond: torch.Tensor
    repeats: list[int]
    latent: int | tuple[int, int] = 8  # side, or (height, width) for non-square images
    steps: int = 3
    img2img: bool = False
    enable_hr: bool = False
    hr_latent: int | tuple[int, int] = 16
    skip_uncond_steps: set = field(default_factory=set)
    #: The refiner (a ``CheckpointInfo`` of tests/doubles/sd_model.py) and the step fraction it takes over at.
    refiner_checkpoint_info: object = None
    refiner_switch_at: float | None = None
    #: The conds the refiner's text encoder gives, when its context width differs from the base's.
    refiner_cond: torch.Tensor | None = None
    refiner_uncond: torch.Tensor | None = None
    #: The hires pass's checkpoint (``None``: the one the generation started with, as A1111's
    #: ``reload_model_weights(info=None)`` selects it).
    hr_checkpoint_info: object = None
    is_hr_pass: bool = False
    sampler: Sampler | None = None
    samplers: list = field(default_factory=list)
    extra_generation_params: dict = field(default_factory=dict)
    seed: int = 0
    #: This batch's seed per image (processing.py sets ``p.seeds`` before each batch; by default
    #: ``seed + i``, as ``all_seeds`` is made without subseeds).
    seeds: list = field(default_factory=list)
    cfg_scale: float = 5.0
    is_api: bool = False  # set by modules/api/api.py for API requests
    iteration: int = 0  # the batch iteration (n_iter) being generated
    processed: object = None  # what postprocess received (set by run_job)

    def __post_init__(self) -> None:
        if not self.seeds:
            self.seeds = [self.seed + i for i in range(self.batch_size)]

    @property
    def batch_size(self) -> int:
        return len(self.repeats)

    def setup_conds(self) -> None:
        """The conds from the loaded model's text encoder (on the device; under lowvram this moves
        the text encoder there and the UNet off it). The refiner's own conds when its width differs."""
        model = shared.sd_model
        cond, uncond = self.cond, self.uncond
        if self.refiner_cond is not None and cond.shape[-1] != model.context_dim:
            cond, uncond = self.refiner_cond, self.refiner_uncond
        self.conds = (model.get_learned_conditioning(cond), model.get_learned_conditioning(uncond))

    def get_conds(self):
        return self.conds


def _hw(side: int | tuple[int, int]) -> tuple[int, int]:
    return (side, side) if isinstance(side, int) else tuple(side)


def run_job(script, args, p: Processing, errors: list[str] | None = None):
    """process → [before_every_sampling → sample] per pass → postprocess, like process_images."""
    errors = [] if errors is None else errors

    def hook(name, *extra):
        try:
            getattr(script, name)(p, *extra, *args)
        except Exception:  # ScriptRunner reports and carries on
            errors.append(traceback.format_exc())

    def new_pass(x):
        """Conds, a new sampler, then process_before_every_sampling (its errors reported, not raised)."""
        p.sd_model = shared.sd_model  # A1111: ``p.sd_model`` is a property over ``shared.sd_model``
        p.setup_conds()
        p.sampler = Sampler(p, p.steps)
        p.samplers.append(p.sampler)
        try:
            script.process_before_every_sampling(p, x=x, noise=x, c=p.conds[0], uc=p.conds[1])
        except Exception:
            errors.append(traceback.format_exc())

    sd_models.model_data.set_sd_model(p.sd_model)
    selected = getattr(p.sd_model, "sd_checkpoint_info", None)  # the checkpoint chosen in the UI
    hook("process")
    g = torch.Generator().manual_seed(p.seed)
    batch = len(p.repeats)
    x = torch.randn(batch, 4, *_hw(p.latent), generator=g).to(devices.device)
    new_pass(x)
    if p.img2img:
        samples = p.sampler.sample_img2img(p, x, torch.randn_like(x), *p.conds)
    else:
        samples = p.sampler.sample(p, x, *p.conds)
    if p.enable_hr:
        p.is_hr_pass = True
        shared.sd_model.decode_first_stage(samples)  # the first pass's images (the VAE on the device)
        info = p.hr_checkpoint_info or selected
        if info is not None:  # back from a refiner, or to the hires checkpoint (``sample_hr_pass``)
            sd_models.reload_model_weights(info=info)
        x = torch.nn.functional.interpolate(samples, size=_hw(p.hr_latent))
        new_pass(x)
        samples = p.sampler.sample_img2img(p, x, torch.zeros_like(x), *p.conds)
        p.is_hr_pass = False
    p.processed = processed_images(shared.sd_model.decode_first_stage(samples))
    hook("postprocess", p.processed)
    return samples.cpu()


def processed_images(samples: torch.Tensor) -> SimpleNamespace:
    """What ``process_images`` hands to ``postprocess``: one PIL image per batch image (a stand-in
    for the VAE decode: the first three latent channels, scaled 8×), an infotext each, no grid."""
    from PIL import Image

    images = []
    for latent in samples.cpu():
        rgb = (latent[:3].float().sigmoid() * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        images.append(Image.fromarray(rgb).resize((rgb.shape[1] * 8, rgb.shape[0] * 8), Image.NEAREST))
    return SimpleNamespace(images=images, infotexts=["generated"] * len(images), index_of_first_image=0)
