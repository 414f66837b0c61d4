"""img2img's own inputs as a unit's sources: the init image(s) as the reference, the inpaint
mask as the region.

Resolved when the job's arguments are parsed (``process``), before the WebUI's ``init`` crops and
resizes anything, so the reference is the image the user gave and the mask is drawn over the
whole of it; "Only masked" then crops the mask like any unit mask (:mod:`.inpaint_area`). A batch
folder runs one generation per file, so each file is its own reference. With several init images
in one request, the WebUI generates one image from each, and each is the reference of its own
image only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..core.engine import UnitRequest
from ..core.errors import IPAdapterError

_INIT = "'use the img2img input as the reference' (image_from_init)"
_INPAINT = "'use the inpaint mask' (mask_from_inpaint)"


def inpaint_region(p: Any) -> Image.Image | None:
    """Where this img2img job inpaints, white, over the whole init image; ``None`` without a mask.

    The mask is binarised as the WebUI does (an RGBA mask's alpha when it has one, else its
    luminance; at 128 when "mask_round" is on) and inverted for "Inpaint not masked"."""
    mask = getattr(p, "image_mask", None)
    if mask is None:
        return None
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if getattr(p, "mask_round", True):
        mask = mask.point(lambda v: 255 if v > 128 else 0)
    if getattr(p, "inpainting_mask_invert", 0):
        mask = ImageOps.invert(mask)
    return mask


def _mask_tensor(mask: Image.Image, invert: bool) -> torch.Tensor:
    values = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)
    return 1.0 - values if invert else values


def resolve(p: Any, request: UnitRequest) -> UnitRequest | None:
    """``request`` with its img2img sources filled in from ``p``, or an error naming the fix.

    ``None``: the unit acts where the WebUI inpaints and this generation inpaints nothing
    (txt2img, plain img2img), so it does nothing here, like a unit whose mask lies outside an
    "Only masked" crop. That lets a unit act only in ADetailer's inpaint passes (said on the
    console)."""
    where = f"IP-Adapter unit {request.number}"
    changes: dict[str, Any] = {}
    if request.image_from_init:
        init = [im for im in (getattr(p, "init_images", None) or []) if im is not None]
        if not init:
            raise IPAdapterError(
                f"{where}: {_INIT} is on, but this generation has no input image (txt2img). Untick it, or "
                "generate from img2img."
            )
        # The batch tab and the UI repeat one image object for every image of the batch: that is one
        # reference, not one per image.
        distinct = len({id(im) for im in init}) > 1
        changes.update(images=[im.convert("RGB") for im in (init if distinct else init[:1])], per_image=distinct)
    if request.mask_from_inpaint:
        region = inpaint_region(p) if getattr(p, "init_images", None) else None
        if region is None:
            print(f"{where}: {_INPAINT} is on and this generation inpaints nothing, so the unit does nothing here.")
            return None
        mask = _mask_tensor(region, request.mask_invert)
        if not bool(mask.any()):
            raise IPAdapterError(
                f"{where}: the inpaint mask{' inverted' if request.mask_invert else ''} covers nothing, so the "
                "unit would do nothing. Untick 'invert', or paint the area to inpaint."
            )
        changes["mask"] = mask
    return dataclasses.replace(request, **changes) if changes else request
