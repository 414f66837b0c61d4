"""Doubles of Forge's path from the sampler to its Flux transformer, in behaviour, from
lllyasviel/stable-diffusion-webui-forge at dfdcbab6 (own implementations, no Forge code):

* ``backend/modules/k_prediction.py`` ``PredictionFlux``: ``percent_to_sigma(p)`` = 1 − p (≤0 → 1,
  ≥1 → 0), ``timestep(sigma)`` = sigma, the input passed as is, denoised = x − sigma·output.
* ``backend/modules/k_model.py`` ``KModel.apply_model(x, t, c_crossattn, control, transformer_options,
  **extra_conds)``: ``diffusion_model(x, t, context=c_crossattn, control=…, transformer_options=…,
  y=…, guidance=…)`` (Flux ignores the options).
* ``backend/memory_management.py``: loading a patcher first unloads every loaded clone of the same
  model (``unload_model_clones``: ``forge_unpatch_model``), then ``forge_patch_model`` sets the
  object patches; ``model_patches_to`` moves the unet function wrapper. The extra modules the
  patcher carries for sampling go to the backend double's ``current_loaded_models``. ersatzForge reuses a
  loaded clone instead (``MemoryManagement(reuse_clones=True)``).
* ``backend/sampling/sampling_function.py`` ``calc_cond_uncond_batch``: chunks of B rows, uncond
  first when both fit in one call; ``transformer_options`` = a shallow copy plus
  ``cond_or_uncond``/``sigmas``; with a ``model_function_wrapper`` the model runs as
  ``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})``.
* ``modules/sd_samplers_cfg_denoiser.py``: ``on_cfg_denoiser`` before the model runs; true CFG
  when the uncond is not skipped (Flux dev with cfg 1 skips it, guidance goes in ``guidance``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from modules import script_callbacks

from tests.doubles.forge_backend import UnetPatcher


class PredictionFlux:
    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return 1.0 - percent

    def timestep(self, sigma):
        return sigma

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, out, x):
        return x - out * sigma.view(sigma.shape[:1] + (1,) * (out.ndim - 1))


class KModel:
    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model
        self.predictor = PredictionFlux()
        self.computation_dtype = torch.float32

    def apply_model(self, x, t, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        xc = self.predictor.calculate_input(t, x)
        out = self.diffusion_model(
            xc, self.predictor.timestep(t), context=c_crossattn, control=control,
            transformer_options=transformer_options or {}, **kwargs,
        ).float()  # fmt: skip
        return self.predictor.calculate_denoised(t, out, x)


def flux_patcher(diffusion_model) -> UnetPatcher:
    return UnetPatcher(KModel(diffusion_model), load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class MemoryManagement:
    """``current_loaded_models`` and ``load_models_gpu`` for one device.

    ``reuse_clones``: ersatzForge (DenOfEquity/ersatzForge fca12a2, ``backend/memory_management.py``
    ``load_models_gpu``): a patcher that is a clone of a loaded one (same LoRA patches) runs on the
    loaded model as it is: nothing unloaded, the new clone's object patches never applied. Only a
    model not loaded yet gets its patcher's object patches."""

    def __init__(self, reuse_clones: bool = False):
        self.loaded: list = []
        self.reuse_clones = reuse_clones

    def load(self, patcher) -> None:
        if self.reuse_clones:
            same = [m for m in self.loaded if patcher.is_clone(m)]
            if same:
                self.loaded.insert(0, self.loaded.pop(self.loaded.index(same[0])))
                return
        for other in [m for m in self.loaded if patcher.is_clone(m) and m is not patcher]:
            self.loaded.remove(other)
            other.forge_unpatch_model()
        if patcher not in self.loaded:
            patcher.model_patches_to(patcher.load_device)
            patcher.forge_patch_model(patcher.load_device)
            self.loaded.insert(0, patcher)
        # the modules the clone carries for sampling (K/V, Redux's tokens): entries in the host's
        # list of loaded models (the backend double's), where nothing of Forge takes them off
        from backend import memory_management

        memory_management.load_models_gpu(list(patcher.extra_model_patchers_during_sampling))


@dataclass
class FluxConds:
    """One prompt's conditioning: T5 tokens [B, T, C], pooled CLIP [B, P], distilled guidance [B]."""

    context: torch.Tensor
    y: torch.Tensor
    guidance: torch.Tensor


def calc_cond_uncond_batch(patcher, cond: FluxConds, uncond: FluxConds | None, x, sigma, batching):
    """The model outputs (denoised) for cond and uncond; ``batching`` lists the chunk groups."""
    model = patcher.model
    outs = {}
    for chunks in [[0]] if uncond is None else batching:
        picked = [cond if c == 0 else uncond for c in chunks]
        to = dict(patcher.model_options.get("transformer_options", {}))
        to["cond_or_uncond"] = list(chunks)
        to["sigmas"] = torch.cat([sigma] * len(chunks))
        c = {
            "c_crossattn": torch.cat([p.context for p in picked]),
            "y": torch.cat([p.y for p in picked]),
            "guidance": torch.cat([p.guidance for p in picked]),
            "transformer_options": to,
        }
        x_in, t_in = torch.cat([x] * len(chunks)), torch.cat([sigma] * len(chunks))
        wrapper = patcher.model_options.get("model_function_wrapper")
        if wrapper is not None:
            out = wrapper(model.apply_model, {"input": x_in, "timestep": t_in, "c": c, "cond_or_uncond": list(chunks)})
        else:
            out = model.apply_model(x_in, t_in, **c)
        for chunk, o in zip(chunks, out.chunk(len(chunks)), strict=True):
            outs[chunk] = o
    return outs[0], outs.get(1)


class FluxDenoiser:
    def __init__(self, p, total):
        self.p, self.step, self.total_steps, self.outputs = p, 0, total, []

    def forward(self, x, sigma, cfg):
        params = script_callbacks.CFGDenoiserParams(x, None, sigma, self.step, self.total_steps, None, None, self)
        script_callbacks.cfg_denoiser_callback(params)
        patcher = self.p.sd_model.forge_objects.unet
        self.p.memory.load(patcher)
        cond, uncond = calc_cond_uncond_batch(
            patcher, self.p.cond, self.p.uncond if cfg != 1 else None, x, sigma, self.p.batching
        )
        self.outputs.append((cond, uncond))
        self.step += 1
        return cond if uncond is None else uncond + cfg * (cond - uncond)


class FluxSampler:
    """Euler over the flow-matching sigmas 1 → 0 (shift omitted), ``steps`` steps."""

    def __init__(self, p):
        self.p, self.denoiser = p, None

    def sample(self, p, x, conditioning=None, unconditional_conditioning=None, image_conditioning=None):
        sigmas = torch.linspace(1.0, 0.0, p.steps + 1)
        self.denoiser = FluxDenoiser(p, p.steps)
        for i in range(p.steps):
            sigma = torch.full((x.shape[0],), float(sigmas[i]))
            denoised = self.denoiser.forward(x, sigma, p.cfg_scale)
            x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
        return x


@dataclass
class FluxProcessing:
    sd_model: object
    cond: FluxConds
    uncond: FluxConds
    memory: MemoryManagement
    batch: int = 1
    latent: tuple[int, int] = (6, 8)
    steps: int = 3
    cfg_scale: float = 1.0
    batching: list = field(default_factory=lambda: [[1, 0]])
    is_hr_pass: bool = False
    is_api: bool = False
    sampler: FluxSampler | None = None
    extra_generation_params: dict = field(default_factory=dict)
    iteration: int = 0

    @property
    def batch_size(self) -> int:
        return self.batch


class FluxForgeModel:
    """``ForgeDiffusionEngine`` for Flux: the UNet patcher in ``forge_objects.unet``, no SD flags."""

    def __init__(self, patcher):
        self.forge_objects = SimpleNamespace(unet=patcher)
        self.forge_objects_after_applying_lora = SimpleNamespace(unet=patcher)
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False


def run_flux_job(p: FluxProcessing, before_sampling) -> torch.Tensor:
    """One pass as ``modules/processing.py`` runs it: reset the patcher, new sampler, the scripts'
    per-pass hook (``before_sampling(p)``), then sampling from seeded noise."""
    p.sd_model.forge_objects = SimpleNamespace(unet=p.sd_model.forge_objects_after_applying_lora.unet)
    p.sampler = FluxSampler(p)
    before_sampling(p)
    c = p.cond.context.shape[0]
    x = torch.randn(c, 4, *p.latent, generator=torch.Generator().manual_seed(0))
    return p.sampler.sample(p, x)
