"""Doubles of A1111 1.10.1's ``ScriptRunner`` (modules/scripts.py) and of ``process_images_inner``
(modules/processing.py) for several always-on scripts, with img2img "Inpaint area: Only masked".

Where ``run_job`` (webui_sampling.py) drives one script, this drives a runner, because ADetailer
(tests/doubles/adetailer.py) starts a whole inner generation from its ``postprocess_image`` hook,
with its own, filtered runner. What is mirrored, in behaviour:

* ``ScriptRunner``: each hook calls every always-on script that overrides it, with its slice
  ``p.script_args[args_from:args_to]``; an exception is reported (appended to ``errors``) and the
  next script runs. ``script.filename`` is the script file's path (``ScriptRunner.initialize_scripts``
  sets it from the loaded file), which is what ADetailer filters by.
* ``process_images_inner``: ``process`` → ``p.init`` → per batch iteration: a new sampler,
  ``process_before_every_sampling``, ``sample``/``sample_img2img``, decode, then per image
  ``postprocess_image`` (the image may be replaced), the paste back over the init image for "Only
  masked", and its infotext (made from ``p.extra_generation_params`` AFTER ``postprocess_image``);
  then ``postprocess`` with the result. An exception inside sampling propagates (no ``postprocess``).
* ``StableDiffusionProcessingImg2Img.init`` for "Only masked" (``inpaint_full_res``): the crop box is
  the mask's bounding box, grown by the padding (clamped to the image), then widened to the output's
  aspect (``masking.get_crop_region_v2`` + ``expand_crop_region``); ``paste_to`` is (x, y, w, h) of that
  box; the crop of the init image is resized to the output with ``resize_image`` mode 2. A blank mask
  falls back to whole-picture img2img (``inpaint_full_res`` turned off).

Left out: mask blur (ADetailer's ``ad_mask_blur``; tests pass 0), colour correction, overlays'
soft edges (the paste back is a hard composite through the binary mask), face restoration.
The VAE is a stand-in: decode is ``processed_images`` of webui_sampling.py, encode its inverse.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from modules import images, shared
from PIL import Image

from .webui_sampling import Processing, Sampler, processed_images


class ScriptRunner:
    """The always-on part of ``modules.scripts.ScriptRunner``."""

    def __init__(self, scripts: list, errors: list[str] | None = None):
        self.alwayson_scripts = list(scripts)
        self.errors = [] if errors is None else errors
        start = 0
        for script in self.alwayson_scripts:  # as the UI assigns them: one slice per script
            script.args_from, script.args_to = start, start + script.n_args
            start = script.args_to

    def _call(self, name: str, p, *extra, **kwargs) -> None:
        for script in self.alwayson_scripts:
            method = getattr(script, name, None)
            if method is None:
                continue
            try:
                method(p, *extra, *p.script_args[script.args_from : script.args_to], **kwargs)
            except Exception:
                self.errors.append(f"Error running {name}: {script.filename}\n{traceback.format_exc()}")

    def before_process(self, p) -> None:
        self._call("before_process", p)

    def process(self, p) -> None:
        self._call("process", p)

    def process_before_every_sampling(self, p, **kwargs) -> None:
        self._call("process_before_every_sampling", p, **kwargs)

    def postprocess_image(self, p, pp) -> None:
        self._call("postprocess_image", p, pp)

    def postprocess(self, p, processed) -> None:
        self._call("postprocess", p, processed)


def as_script(script, filename: str | Path, n_args: int):
    """``script`` as the runner holds it: its file's path and its number of UI arguments."""
    script.filename, script.n_args = str(filename), n_args
    return script


@dataclass
class ImageProcessing(Processing):
    """The attributes of StableDiffusionProcessing(Txt2Img|Img2Img) that the runner path reads."""

    scripts: ScriptRunner | None = None
    script_args: list = field(default_factory=list)
    width: int = 64
    height: int = 64
    n_iter: int = 1
    batch_index: int = 0
    init_images: list | None = None
    image_mask: Image.Image | None = None
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 0
    denoising_strength: float = 0.75
    paste_to: tuple | None = None
    fail_at_step: int | None = None  # a sampler that raises at this step (an interrupt, a NaN check)
    fail_with: type = RuntimeError
    closed: bool = False

    def close(self) -> None:
        self.closed = True


def crop_region(mask: Image.Image, pad: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The "Only masked" box: bounding box + padding, widened to width:height inside the image."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    x1, y1, x2, y2 = bbox
    w_img, h_img = mask.size
    if pad:
        x1, y1, x2, y2 = max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w_img), min(y2 + pad, h_img)
    aspect = width / height
    if (x2 - x1) / (y2 - y1) > aspect:  # too wide: grow the height
        lo, hi = _grow(y1, y2, int((x2 - x1) / aspect - (y2 - y1)), h_img)
        return x1, lo, x2, hi
    lo, hi = _grow(x1, x2, int((y2 - y1) * aspect - (x2 - x1)), w_img)
    return lo, y1, hi, y2


def _grow(a: int, b: int, extra: int, limit: int) -> tuple[int, int]:
    """[a, b) grown by ``extra`` (half before, the rest after), shifted back inside [0, limit]."""
    a, b = a - extra // 2, b + extra - extra // 2
    if b >= limit:
        a, b = a - (b - limit), limit
    if a < 0:
        a, b = 0, b - a
    return a, min(b, limit)


def encode(image: Image.Image, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Stand-in VAE encode, the inverse of ``processed_images``' decode: [4, h, w]."""
    small = image.convert("RGB").resize((latent_hw[1], latent_hw[0]), Image.BOX)
    rgb = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).clamp(1 / 255, 254 / 255)
    return torch.cat([torch.logit(rgb).permute(2, 0, 1), torch.zeros(1, *latent_hw)])


class FailingSampler(Sampler):
    """Raises from inside the UNet at step ``p.fail_at_step``, while the extension's hooks are on."""

    def _loop(self, x, cond, uncond, steps):
        fail_at = self.p.fail_at_step

        def on_step(module, args, output):  # runs inside the UNet, hooks attached
            if self.denoiser is not None and self.denoiser.step == fail_at:
                raise self.p.fail_with(f"sampling failed at step {fail_at}")

        handle = shared.sd_model.model.diffusion_model.register_forward_hook(on_step)
        try:
            return super()._loop(x, cond, uncond, steps)
        finally:
            handle.remove()


def init(p: ImageProcessing) -> tuple[int, int, int, int] | None:
    """``p.init`` for img2img: the "Only masked" crop box (None for the whole picture)."""
    if p.image_mask is None or not p.inpaint_full_res:
        return None
    mask = p.image_mask.convert("L").point(lambda v: 255 if v > 128 else 0)
    box = crop_region(mask, p.inpaint_full_res_padding, p.width, p.height)
    if box is None:
        p.inpaint_full_res = False
        return None
    p.paste_to = (box[0], box[1], box[2] - box[0], box[3] - box[1])
    p.extra_generation_params["Inpaint area"] = "Only masked"
    p.extra_generation_params["Masked area padding"] = p.inpaint_full_res_padding
    return box


def paste_back(p: ImageProcessing, generated: Image.Image) -> Image.Image:
    """The generated region over the init image, through the (binary) mask."""
    x, y, w, h = p.paste_to
    base = p.init_images[0].convert("RGB")
    region = Image.new("RGB", base.size)
    region.paste(images.resize_image(0, generated, w, h), (x, y))
    mask = p.image_mask.convert("L").point(lambda v: 255 if v > 128 else 0)
    return Image.composite(region, base, mask)


def process_images(p: ImageProcessing) -> SimpleNamespace:
    """``process_images_inner`` with the runner's hooks; returns a ``Processed``-like result."""
    runner = p.scripts
    shared.sd_model = p.sd_model
    if runner is not None:
        runner.process(p)
    box = init(p) if p.img2img else None
    latent_hw = (p.height // 8, p.width // 8)
    p.latent = latent_hw
    result = SimpleNamespace(images=[], infotexts=[], index_of_first_image=0, samples=[])
    g = torch.Generator().manual_seed(p.seed)
    for iteration in range(p.n_iter):
        p.iteration = iteration
        p.sampler = (FailingSampler if p.fail_at_step is not None else Sampler)(p, p.steps)
        p.samplers.append(p.sampler)
        noise = torch.randn(p.batch_size, 4, *latent_hw, generator=g)
        if runner is not None:
            runner.process_before_every_sampling(p, x=noise, noise=noise, c=p.cond, uc=p.uncond)
        if p.img2img:
            start = images.resize_image(2, p.init_images[0].crop(box), p.width, p.height) if box else p.init_images[0]
            x = torch.stack([encode(start, latent_hw)] * p.batch_size)
            samples = p.sampler.sample_img2img(p, x, noise * p.denoising_strength, p.cond, p.uncond)
        else:
            samples = p.sampler.sample(p, noise, p.cond, p.uncond)
        result.samples.append(samples)
        for i, image in enumerate(processed_images(samples).images):
            p.batch_index = i
            if runner is not None:
                pp = SimpleNamespace(image=image)
                runner.postprocess_image(p, pp)
                image = pp.image
            if box is not None:
                image = paste_back(p, image)
            result.images.append(image)
            result.infotexts.append(infotext(p))
    p.processed = result
    if runner is not None:
        runner.postprocess(p, result)
    return result


def infotext(p: ImageProcessing) -> str:
    """``create_infotext``'s parameter line, reduced to ``extra_generation_params``."""
    return ", ".join(f"{k}: {v}" for k, v in p.extra_generation_params.items() if v is not None)
