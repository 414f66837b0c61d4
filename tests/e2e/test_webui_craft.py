"""A real WebUI over HTTP: composition precise, tiled references, the reference mask, noise types
and one reference per batch image (issue 22).

Opt-in like the rest of tests/e2e (``WEBUI_URL`` or ``WEBUI_ROOT``, see ``conftest.py``).
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from .conftest import WebUI
from .http_client import pixels, png_b64
from .test_webui_http import REFERENCE, baseline, generate, same_pixels, txt2img_payload, unit, with_units

__all__ = ["baseline"]  # the session fixture, shared with test_webui_http


def wide_reference(width: int = 210, height: int = 90, seed: int = 7) -> str:
    """A 21:9 picture whose left, middle and right thirds differ, as base64 PNG."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    arr[:, : width // 3, 0] = 255
    arr[:, 2 * width // 3 :, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def grey_mask(size: tuple[int, int], left_white: float) -> str:
    """White over the left ``left_white`` share of the width, black elsewhere (base64 PNG)."""
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[:, : round(size[0] * left_white)] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def infotext(webui: WebUI, payload: dict) -> tuple[str, str]:
    answer = webui.client.post("/sdapi/v1/txt2img", payload)
    assert answer.status == 200, answer.text[:3000]
    body = answer.json()
    return body["images"][0], json.loads(body["info"])["infotexts"][0]


def test_composition_precise_changes_the_image(webui: WebUI, model: str, baseline: str):
    precise = unit(model, 0.8, weight_type="composition precise", composition_boost=0.5)
    image, info = infotext(webui, with_units(txt2img_payload(), precise))
    assert not same_pixels(image, baseline)
    assert "weight_type: composition precise" in info and "composition_boost: 0.5" in info, info
    plain = generate(webui.client, with_units(txt2img_payload(), unit(model, 0.8, weight_type="composition")))[0]
    assert not same_pixels(image, plain)  # the boost's negative side acts
    zero = unit(model, 0.0, weight_type="composition precise", composition_boost=0.0)
    assert same_pixels(generate(webui.client, with_units(txt2img_payload(), zero))[0], baseline)


def test_a_wide_reference_with_tiles_differs_from_the_centre_and_says_so(webui: WebUI, model: str):
    wide = wide_reference()
    payload = txt2img_payload(width=96, height=64)
    tiled, info = infotext(webui, with_units(payload, {**unit(model, 1.0), "image": wide, "crop": "tiles"}))
    centre = generate(webui.client, with_units(payload, {**unit(model, 1.0), "image": wide}))[0]
    assert not same_pixels(tiled, centre)
    assert "crop: tiles" in info and "tiles: 3 across" in info, info
    again = generate(webui.client, with_units(payload, {**unit(model, 1.0), "image": wide, "crop": "tiles"}))[0]
    assert same_pixels(again, tiled)
    square = generate(webui.client, with_units(txt2img_payload(), unit(model, 1.0, crop="tiles")))[0]
    assert same_pixels(square, generate(webui.client, with_units(txt2img_payload(), unit(model, 1.0)))[0])
    mapped = {**unit(model, 1.0), "image": wide, "crop": "tiles", "attention_map": True}
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(payload, mapped))
    assert answer.status == 200, answer.text[:3000]
    body = answer.json()
    assert len(body["images"]) == 2 and same_pixels(body["images"][0], tiled)  # the image, then its map
    assert "attention map: unit 1" in json.loads(body["info"])["infotexts"][1]


def test_the_reference_mask_works(webui: WebUI, model: str):
    payload = txt2img_payload()
    plain = generate(webui.client, with_units(payload, unit(model, 1.0)))[0]
    white = generate(webui.client, with_units(payload, unit(model, 1.0, reference_mask=grey_mask((96, 96), 1.0))))[0]
    assert same_pixels(white, plain)  # all white is exactly no mask
    half, info = infotext(webui, with_units(payload, unit(model, 1.0, reference_mask=grey_mask((96, 96), 0.5))))
    assert not same_pixels(half, plain) and "reference_mask: yes" in info, info
    black = unit(model, 1.0, reference_mask=grey_mask((8, 8), 0.0))
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(payload, black))
    assert answer.status == 422 and "the reference mask is black everywhere" in answer.json()["detail"], answer.text
    assert same_pixels(generate(webui.client, with_units(payload, unit(model, 1.0)))[0], plain)  # still usable


def test_noise_types_are_deterministic_and_differ(webui: WebUI, model: str):
    payload = txt2img_payload()
    images = {}
    for kind in ("fade", "dissolve", "gaussian", "shuffle"):
        noisy = unit(model, 1.0, noise=0.6, noise_type=kind)
        images[kind], info = infotext(webui, with_units(payload, noisy))
        assert f"noise_type: {kind}" in info, info
        assert same_pixels(generate(webui.client, with_units(payload, noisy))[0], images[kind])
    kinds = list(images)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not same_pixels(images[a], images[b]), (a, b)


def test_per_batch_image_with_a_batch_of_two_equals_two_single_requests(webui: WebUI, model: str):
    first, second = REFERENCE, png_b64(96, seed=9)
    batch = {**unit(model, 1.0), "image": [first, second], "per_batch_image": True}
    both = generate(webui.client, with_units(txt2img_payload(batch_size=2, seed=4321), batch))
    one = generate(webui.client, with_units(txt2img_payload(seed=4321), {**unit(model, 1.0), "image": first}))[0]
    two = generate(webui.client, with_units(txt2img_payload(seed=4322), {**unit(model, 1.0), "image": second}))[0]
    # a batch of two runs the UNet on two rows at once: equal up to the last bit of a few pixels
    for got, alone in ((both[0], one), (both[1], two)):
        diff = np.abs(pixels(got).astype(int) - pixels(alone).astype(int))
        assert diff.max() <= 3, diff.max()
    swapped = generate(webui.client, with_units(txt2img_payload(seed=4322), {**unit(model, 1.0), "image": first}))[0]
    assert np.abs(pixels(both[1]).astype(int) - pixels(swapped).astype(int)).max() > 3  # its own reference
    wrong = {**batch, "image": [first, second, first]}
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(txt2img_payload(batch_size=2), wrong))
    detail = answer.json().get("detail", "")
    assert answer.status == 422 and "3 reference image(s) for a batch size of 2" in detail, answer.text
