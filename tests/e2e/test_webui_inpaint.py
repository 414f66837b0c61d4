"""Inpainting with "Inpaint area: Only masked" against a real WebUI: a unit's mask, drawn over the
whole image, is cropped with the image, so a unit whose region lies outside the inpainted area
changes nothing and one inside it does."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .conftest import WebUI
from .test_webui_http import generate, same_pixels, txt2img_payload, unit, with_units
from .test_webui_regions import half_mask


def left_quarter() -> str:
    """The inpaint mask: the left quarter of a 128×64 image."""
    arr = np.zeros((64, 128), np.uint8)
    arr[:, :32] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def only_masked(**overrides) -> dict:
    # the crop (left quarter, widened to the 64×64 output's aspect) is the image's left half
    return txt2img_payload(init_images=[wide_image()], denoising_strength=0.75, mask=left_quarter(),
                           inpaint_full_res=True, inpaint_full_res_padding=0, inpainting_fill=1, mask_blur=0,
                           **overrides)  # fmt: skip


def wide_image() -> str:
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_only_masked_crops_the_unit_mask_with_the_image(webui: WebUI, model: str, repeatable_img2img: None):
    generate(webui.client, only_masked(), "img2img")  # the server's first inpaint differs from later ones
    plain = generate(webui.client, only_masked(), "img2img")[0]
    outside = generate(webui.client, with_units(only_masked(), unit(model, mask=half_mask(True, (128, 64)))), "img2img")
    inside = generate(webui.client, with_units(only_masked(), unit(model, mask=half_mask(False, (128, 64)))), "img2img")
    assert same_pixels(outside[0], plain), "a unit masked outside the inpainted area changed the image"
    assert not same_pixels(inside[0], plain), "a unit masked over the inpainted area did nothing"
