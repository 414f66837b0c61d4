"""IP-Adapter units inside ADetailer's inner inpaint passes, against a real WebUI with ADetailer
(Bing-su/adetailer) installed: the units stay out unless ``ipadapter`` is in ADetailer's setting
"Script names to apply to ADetailer" (``ad_script_names``), and then act on the detected face's
"Only masked" crop like in any inpaint (a unit masked outside that crop changes nothing).

Opt-in twice: the suite's WebUI (``WEBUI_ROOT``/``WEBUI_URL``, see conftest.py), and ADetailer in it
with its mediapipe detectors (``GET /adetailer/v1/ad_model`` lists ``mediapipe_face_short``);
skipped with the reason otherwise. A tiny random checkpoint draws no faces, so the request is an
img2img of a drawn face with ADetailer's "Skip img2img": ADetailer then detects on the init image
and inpaints it (mediapipe's short-range face detector finds the drawn face with score ~0.8).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from .conftest import WebUI
from .http_client import pixels
from .test_webui_http import generate, same_pixels, txt2img_payload, unit, with_units

SIZE = 128
DETECTOR = "mediapipe_face_short"


def drawn_face() -> str:
    """A flat cartoon face (skin oval, eyes with pupils, nose, mouth) filling the middle of the image;
    the detector's box is about (36, 36)–(93, 93)."""
    s = SIZE / 256
    image = Image.new("RGB", (SIZE, SIZE), (90, 120, 160))
    draw = ImageDraw.Draw(image)

    def box(*values: float) -> tuple[int, ...]:
        return tuple(round(v * s) for v in values)

    draw.ellipse(box(78, 53, 178, 183), fill=(224, 180, 150))
    for x in (100, 138):
        draw.ellipse(box(x, 95, x + 18, 108), fill=(255, 255, 255))
        draw.ellipse(box(x + 5, 97, x + 14, 106), fill=(40, 30, 20))
    draw.polygon([box(128, 110), box(122, 140), box(134, 140)], fill=(200, 150, 120))
    draw.ellipse(box(110, 150, 146, 163), fill=(170, 60, 60))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def right_strip() -> str:
    """A unit mask over x ≥ 112: right of the face's crop (box + 8 px padding ends near x = 102)."""
    arr = np.zeros((SIZE, SIZE), np.uint8)
    arr[:, 112:] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


FACE = drawn_face()


@pytest.fixture(scope="module")
def adetailer(webui: WebUI) -> None:
    version = webui.client.get("/adetailer/v1/version")
    if version.status != 200:
        pytest.skip(f"ADetailer is not installed in this WebUI (GET /adetailer/v1/version: {version.status})")
    models = webui.client.get("/adetailer/v1/ad_model").json()["ad_model"]
    if DETECTOR not in models:
        pytest.skip(f"ADetailer lists no {DETECTOR} (mediapipe missing?): {models}")


def payload(script_names: str | None, *units: dict) -> dict:
    """img2img of the drawn face; ADetailer skips the img2img and inpaints the face it finds."""
    tab = {"ad_model": DETECTOR, "ad_confidence": 0.3, "ad_denoising_strength": 0.6, "ad_mask_blur": 0,
           "ad_inpaint_only_masked": True, "ad_inpaint_only_masked_padding": 8}  # fmt: skip
    body = txt2img_payload(init_images=[FACE], denoising_strength=0.75, width=SIZE, height=SIZE)
    body["alwayson_scripts"] = {"ADetailer": {"args": [True, True, tab]}}
    if script_names is not None:
        body["override_settings"] = {"ad_script_names": script_names}
    return with_units(body, *units) if units else body


def test_units_join_adetailer_only_when_named(webui: WebUI, model: str, adetailer: None, repeatable_img2img: None):
    # Warm-ups: on a fresh CPU server the first inpaint, and the inner pass of the first request
    # that loads a unit, differ from later identical requests (measured: max 89 levels over the
    # face crop) although no hook is on the UNet during that pass; later requests are bit-stable.
    generate(webui.client, payload(None), "img2img")
    generate(webui.client, payload(None, unit(model)), "img2img")
    plain = generate(webui.client, payload(None), "img2img")[0]
    assert not same_pixels(plain, FACE), "ADetailer did not inpaint the drawn face"
    changed = (pixels(plain).astype(int) - pixels(FACE).astype(int)).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 20 and xs.max() <= 108 and ys.min() >= 20 and ys.max() <= 108, "inpainted outside the face"

    default = generate(webui.client, payload(None, unit(model)), "img2img")[0]
    by_title = generate(webui.client, payload("IP-Adapter", unit(model)), "img2img")[0]
    assert same_pixels(default, plain), "a unit acted in ADetailer's pass without being in its script names"
    assert same_pixels(by_title, plain), "ADetailer matches script file names, not titles"

    named = generate(webui.client, payload("ipadapter", unit(model)), "img2img")[0]
    outside = generate(webui.client, payload("ipadapter", unit(model, mask=right_strip())), "img2img")[0]
    assert not same_pixels(named, plain), "a unit named in ad_script_names did nothing in ADetailer's pass"
    assert same_pixels(outside, plain), "a unit masked outside the face's crop changed ADetailer's pass"
