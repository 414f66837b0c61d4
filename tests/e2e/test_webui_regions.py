"""A real WebUI over HTTP: weight types, layer weights, masks and the negative side.

Opt-in like the rest of tests/e2e (``WEBUI_URL`` or ``WEBUI_ROOT``, see ``conftest.py``).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from .conftest import WebUI
from .http_client import png_b64
from .test_webui_http import (
    REFERENCE,
    baseline,
    generate,
    latent_upscaler,
    same_pixels,
    txt2img_payload,
    unit,
    with_units,
)

__all__ = ["baseline"]  # the session fixture, shared with test_webui_http


def half_mask(right: bool, size: tuple[int, int] = (96, 64), white: bool = True) -> str:
    """A white half (right or left) on black, as base64 PNG; all black when not ``white``."""
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[:, size[0] // 2 :] = 255 if white else 0
    if not right and white:
        arr = 255 - arr
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_two_masked_units_compose_and_are_written_to_the_infotext(webui: WebUI, model: str):
    payload = txt2img_payload(width=96, height=64)
    plain = generate(webui.client, payload)[0]
    left = unit(model, 0.8, mask=half_mask(False))
    right = {**unit(model, 0.7, weight_type="style transfer", mask=half_mask(True)), "image": png_b64(80, seed=5),
             "negative_image": REFERENCE, "noise": 0.5}  # fmt: skip
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(payload, left, right))
    assert answer.status == 200, answer.text[:3000]
    body = answer.json()
    image = body["images"][0]
    assert not same_pixels(image, plain)
    info = json.loads(body["info"])["infotexts"][0]
    assert info.count("mask: yes") == 2 and "weight_type: style transfer" in info and "noise: 0.5" in info, info
    again = generate(webui.client, with_units(payload, left, right))[0]
    assert again == image


def test_all_zero_layer_weights_equal_the_baseline(webui: WebUI, model: str, baseline: str):
    zeros = unit(model, 1.0, layer_weights=[0.0] * 16, weight_type="style transfer")
    image = generate(webui.client, with_units(txt2img_payload(), zeros))[0]
    assert same_pixels(image, baseline)


def test_mask_with_hires_fix(webui: WebUI, model: str):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
             "hr_upscaler": latent_upscaler(webui.client), "width": 96, "height": 64, "hr_additional_modules": ["Use same choices"]}  # fmt: skip
    image = generate(webui.client, with_units(txt2img_payload(**hires), unit(model, mask=half_mask(True))))[0]
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(image)))).shape == (96, 144, 3)


def test_black_mask_is_a_422_that_says_so(webui: WebUI, model: str):
    black = half_mask(True, (8, 8), white=False)
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(txt2img_payload(), unit(model, mask=black)))
    assert answer.status == 422 and "the mask is black everywhere" in answer.json()["detail"], answer.text[:2000]
