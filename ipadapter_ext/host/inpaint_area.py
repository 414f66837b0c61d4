"""Unit masks under "Inpaint area: Only masked" (img2img with ``inpaint_full_res``).

The WebUI then crops the inpainted region (plus padding, widened to the output's aspect) out of
the init image, generates it at the full output size and pastes it back (``p.paste_to`` is the
box, in the init image's pixels, once ``p.init`` has run). A unit's mask is drawn over the whole
image, so it is stretched to the init image and cropped and resized exactly as the image is, with
the host's own ``images.resize_image`` (mode 2, "resize and fill"). A unit whose region lies
outside the box does nothing here: it is left out, so the result is that of no unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.engine import UnitRequest


def inpaint_box(p: Any) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """(init image size, crop box x1, y1, x2, y2) when this pass generates a cropped region."""
    box = getattr(p, "paste_to", None)
    init = getattr(p, "init_images", None)
    if not getattr(p, "inpaint_full_res", False) or box is None or not init:
        return None
    x1, y1, w, h = (int(v) for v in box)
    return init[0].size, (x1, y1, x1 + w, y1 + h)


def crop_mask(
    mask: torch.Tensor, image_size: tuple[int, int], box: tuple[int, int, int, int], size: tuple[int, int]
) -> torch.Tensor:
    """``mask`` ([H, W] in [0, 1], over the whole image) as the generated region sees it."""
    from modules import images

    whole = Image.fromarray((mask.float().clamp(0, 1).numpy() * 255).round().astype(np.uint8), "L")
    whole = whole.resize(image_size, resample=Image.BOX)  # stretched over the image, as without a crop
    region = images.resize_image(2, whole.crop(box), size[0], size[1]).convert("L")
    return torch.from_numpy(np.asarray(region, dtype=np.float32) / 255.0)


def follow_inpaint_area(p: Any, requests: list[UnitRequest], note: Callable[[str], None]) -> list[UnitRequest]:
    """``requests`` with their masks cropped to the inpainted region; units left with nothing
    to act on are dropped (said on the console). Unchanged outside "Only masked"."""
    found = inpaint_box(p)
    if found is None:
        return requests
    image_size, box = found
    kept = []
    for request in requests:
        if request.mask is None:
            kept.append(request)
            continue
        mask = crop_mask(request.mask, image_size, box, (int(p.width), int(p.height)))
        if not bool(mask.any()):
            note(f"IP-Adapter: unit {request.number}'s mask lies outside the inpainted area; it does nothing here.")
            continue
        kept.append(dataclasses.replace(request, mask=mask))
    return kept
