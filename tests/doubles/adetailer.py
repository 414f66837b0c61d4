"""Double of ADetailer's inner inpaint passes: Bing-su/adetailer at commit
36189cbea735b85fd01e98ac42002b8ce6f0e41d (version 25.3.0), ``scripts/!adetailer.py``, in behaviour.

The contract the extension lives with (what ADetailer does, read from that commit):

* ADetailer is an always-on script. ``process(p)`` adds its infotext to ``p.extra_generation_params``;
  it does nothing when ``p._ad_disabled`` is set (its own inner passes carry it).
* ``postprocess_image(p, pp)`` runs for each generated image of the OUTER generation, after its
  sampling and decode and before the outer ``postprocess`` (so our outer per-``p`` state is still
  on ``p``, with the hooks already off: they come off in the sampler's ``finally``). For each
  detector tab it detects boxes on ``pp.image`` and runs one inner generation per box with
  ``modules.processing.process_images``; the last inner image replaces ``pp.image``.
* The inner ``p`` is a NEW ``StableDiffusionProcessingImg2Img`` (``get_i2i_p``), not a copy of the
  outer ``p``: attributes the outer ``p`` carries (our ``ipadapter_state``) are not on it.
  init_images=[pp.image], image_mask = the box (white inside), inpaint_full_res = "Inpaint only
  masked" (default True), inpaint_full_res_padding (default 32), mask_blur (default 4),
  denoising_strength (default 0.4), inpainting_fill=1 (original), the outer's width/height, steps,
  sampler, cfg, seed (all_seeds[i]), batch_size=1, n_iter=1, prompts from the outer (blank ADetailer
  prompt → the outer prompt), ``extra_generation_params`` = a copy of the outer's (callables dropped),
  ``_ad_disabled = _ad_inner = True``. It is not an API request (``is_api`` keeps its default).
  Per box: ``p2 = copy(i2i)`` (shallow), seed + box index unless "same seed for each tab", run,
  ``p2.close()``; a ``NansException`` skips the box, any other exception propagates out of
  ``postprocess_image`` (re-raised by ADetailer's ``rich_traceback``; the WebUI's ScriptRunner reports
  it and the outer generation carries on).
* Scripts of the inner pass (``script_filter``): a shallow copy of the outer runner whose
  ``alwayson_scripts`` keep only scripts whose file STEM (``Path(script.filename).stem``, not the
  title) is in the setting ``ad_script_names`` (comma-separated; each name also stripped; case
  matters) plus "hypertile_script", "soft_inpainting", and "controlnet" when a ControlNet model is
  chosen in ADetailer. Setting ``ad_only_selected_scripts`` off keeps all scripts. The default names
  are dynamic_prompting, dynamic_thresholding, lora_block_weight, negpip, wildcard_recursive,
  wildcards: our script (stem ``ipadapter``) is left out unless the user adds it.
* ``script_args`` of the inner pass: the outer's, each element ``copy.copy``-ed, at the same
  positions (each kept script reads its own ``args_from:args_to`` slice). ADetailer then disables
  ControlNet units (A1111 only): any argument whose class name contains "controlnet", or a dict
  with a "module" key, gets enabled=False; other arguments (ours) pass unchanged. A ControlNet
  model chosen in ADetailer rewrites only ControlNet's slice.
* Around the inner passes, on the OUTER runner (all scripts, not filtered): before them, when
  ``p.batch_index == 0``, ``p.scripts.postprocess(copy(p), Processed(p, [], ...))`` (an empty result);
  after them, when ``p.batch_index == batch_size - 1``, ``before_process(copy(p))`` and
  ``process(copy(p))``. The copies are shallow: same ``extra_generation_params`` dict and same state
  object as the outer ``p``, but their own attribute dict (deleting an attribute on the copy leaves
  the outer ``p``'s).

Not mirrored: the detectors (the box is given), mask preprocessing (dilation, offsets, merge),
dynamic denoising, inpaint size matching, skip-img2img, checkpoint/VAE/sampler overrides, saving.
"""

from __future__ import annotations

from copy import copy
from pathlib import Path
from types import SimpleNamespace

from modules import shared
from PIL import Image, ImageDraw

from .script_runner import ImageProcessing, ScriptRunner, process_images

COMMIT = "36189cbea735b85fd01e98ac42002b8ce6f0e41d"
SCRIPT_DEFAULT = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"
BUILTIN_SCRIPT = "hypertile_script,soft_inpainting"
FILENAME = "extensions/adetailer/scripts/!adetailer.py"


class NansException(Exception):
    """modules.devices.NansException: ADetailer skips the box and goes on."""


def ad_args(enabled: bool = True, **tab) -> list:
    """ADetailer's script arguments: [enable, skip img2img, one dict per tab]."""
    defaults = {
        "ad_model": "face_box",
        "ad_prompt": "",
        "ad_denoising_strength": 0.4,
        "ad_inpaint_only_masked": True,
        "ad_inpaint_only_masked_padding": 32,
        "ad_mask_blur": 0,
        "ad_controlnet_model": "None",
    }
    return [enabled, False, {**defaults, **tab}]


def script_filter(p, tab: dict) -> tuple[ScriptRunner, list]:
    """The inner pass's runner and arguments (``AfterDetailerScript.script_filter``)."""
    runner = copy(p.scripts)
    script_args = type(p.script_args)(_copy_or_same(a) for a in p.script_args)
    if not getattr(shared.opts, "ad_only_selected_scripts", True):
        return runner, script_args
    names = getattr(shared.opts, "ad_script_names", SCRIPT_DEFAULT).split(",") + BUILTIN_SCRIPT.split(",")
    wanted = {n for name in names for n in (name, name.strip())}
    if tab["ad_controlnet_model"] != "None":
        wanted.add("controlnet")
    runner.alwayson_scripts = [s for s in runner.alwayson_scripts if Path(s.filename).stem in wanted]
    return runner, script_args


def _copy_or_same(arg):
    try:
        return copy(arg)
    except TypeError:
        return arg


def disable_controlnet_units(script_args: list) -> list:
    out = []
    for arg in script_args:
        if "controlnet" in type(arg).__name__.lower():
            arg = copy(arg)
            arg.enabled = False
        elif isinstance(arg, dict) and "module" in arg:
            arg = {**arg, "enabled": False}
        out.append(arg)
    return out


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A detector's mask for a box (x1, y1, x2, y2): white inside, as ``create_mask_from_bbox``
    (PIL's ``rectangle``: the x2 column and y2 row are inside)."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


class ADetailer:
    """The always-on script. ``boxes``: what its "detector" finds on every image."""

    n_args = 3

    def __init__(
        self, boxes: list[tuple[int, int, int, int]], fail_at_step: int | None = None, fail_with: type = RuntimeError
    ):
        self.boxes = boxes
        self.filename = FILENAME
        self.fail_at_step, self.fail_with = fail_at_step, fail_with  # an exception inside the inner sampling
        self.passes: list[ImageProcessing] = []  # every inner p that ran
        self.inputs: list[Image.Image] = []  # the image each inner pass started from

    def title(self) -> str:
        return "ADetailer"

    @staticmethod
    def enabled(args: tuple) -> bool:
        tabs = [a for a in args if isinstance(a, dict)]
        return bool(tabs) and (args[0] if isinstance(args[0], bool) else True) and tabs[0]["ad_model"] != "None"

    def process(self, p, *args) -> None:
        if getattr(p, "_ad_disabled", False):
            return
        if not self.enabled(args):
            p._ad_disabled = True
            return
        p.extra_generation_params["ADetailer model"] = args[2]["ad_model"]
        p.extra_generation_params["ADetailer version"] = "25.3.0"

    def postprocess_image(self, p, pp, *args) -> None:
        if getattr(p, "_ad_disabled", False) or not self.enabled(args):
            return
        if p.scripts is not None and p.batch_index == 0:
            p.scripts.postprocess(copy(p), SimpleNamespace(images=[], infotexts=[], index_of_first_image=0))
        for tab in (a for a in args if isinstance(a, dict)):
            self.inner(p, pp, tab)
        if p.scripts is not None and p.batch_index == p.batch_size - 1:
            copy_p = copy(p)
            p.scripts.before_process(copy_p)
            p.scripts.process(copy_p)

    def i2i(self, p, tab: dict, image: Image.Image) -> ImageProcessing:
        """``get_i2i_p``: a new img2img processing from the outer ``p``'s fields."""
        rows = sum(p.repeats[: p.batch_index])
        i2i = ImageProcessing(
            sd_model=p.sd_model,
            cond=p.cond[rows : rows + p.repeats[p.batch_index]],  # blank ADetailer prompt: the image's own
            uncond=p.uncond[p.batch_index : p.batch_index + 1],
            repeats=[p.repeats[p.batch_index]],
            steps=p.steps,
            seed=p.seed,
            width=p.width,
            height=p.height,
            img2img=True,
            init_images=[image],
            denoising_strength=tab["ad_denoising_strength"],
            inpaint_full_res=tab["ad_inpaint_only_masked"],
            inpaint_full_res_padding=tab["ad_inpaint_only_masked_padding"],
            extra_generation_params={k: v for k, v in p.extra_generation_params.items() if not callable(v)},
        )
        i2i.scripts, i2i.script_args = script_filter(p, tab)
        i2i._ad_disabled = i2i._ad_inner = True
        if tab["ad_controlnet_model"] != "Passthrough":
            i2i.script_args = disable_controlnet_units(i2i.script_args)
        if tab["ad_controlnet_model"] == "None":
            i2i.control_net_enabled = False
        return i2i

    def inner(self, p, pp, tab: dict) -> bool:
        """``_postprocess_image_inner``: one inner generation per detected box."""
        i2i = self.i2i(p, tab, pp.image.convert("RGB"))
        processed = None
        p2 = copy(i2i)
        for j, box in enumerate(self.boxes):
            p2.image_mask = box_mask(pp.image.size, box)
            p2.seed = p.seed + j  # "same seed for each tab" off
            p2.fail_at_step, p2.fail_with = self.fail_at_step, self.fail_with
            self.inputs.append(p2.init_images[0])
            self.passes.append(p2)
            try:
                processed = process_images(p2)
            except NansException:
                continue
            finally:
                p2.close()
            p2 = copy(i2i)
            p2.init_images = [processed.images[0]]
        if processed is None:
            return False
        pp.image = processed.images[0]
        return True
