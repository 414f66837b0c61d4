"""img2img's own inputs as a unit's sources, against a real WebUI: the init image as the
reference (one per generated image with several init images), the inpaint mask as the region."""

from __future__ import annotations

import numpy as np

from .conftest import WebUI
from .http_client import pixels, png_b64
from .test_webui_http import INIT_IMAGE, generate, img2img_payload, same_pixels, txt2img_payload, unit, with_units
from .test_webui_inpaint import left_quarter, only_masked

OTHER_INIT = png_b64(64, seed=7)


def from_init(model: str, **fields) -> dict:
    return {**unit(model, **fields), "image": None, "image_from_init": True}


def test_image_from_init_equals_sending_the_init_image(webui: WebUI, model: str, repeatable_img2img: None):
    generate(webui.client, img2img_payload(), "img2img")  # the server's first img2img may differ from later ones
    ours = generate(webui.client, with_units(img2img_payload(), from_init(model)), "img2img")[0]
    sent = generate(webui.client, with_units(img2img_payload(), {**unit(model), "image": INIT_IMAGE}), "img2img")[0]
    other = generate(webui.client, with_units(img2img_payload(), unit(model)), "img2img")[0]
    assert same_pixels(ours, sent), "the init image as the reference differs from sending it as the reference"
    assert not same_pixels(ours, other)


def test_several_init_images_each_reference_their_own_image(webui: WebUI, model: str, repeatable_img2img: None):
    payload = txt2img_payload(init_images=[INIT_IMAGE, OTHER_INIT], denoising_strength=0.75, batch_size=2)
    # img2img's latent is a sample of the VAE's posterior, drawn from torch's global generator as
    # the previous generation left it: a warm-up of the same shape makes the three comparable
    generate(webui.client, payload, "img2img")
    both = generate(webui.client, with_units(payload, from_init(model)), "img2img")
    first = generate(webui.client, with_units(payload, {**unit(model), "image": INIT_IMAGE}), "img2img")
    second = generate(webui.client, with_units(payload, {**unit(model), "image": OTHER_INIT}), "img2img")

    def close(a: str, b: str) -> bool:  # the references are projected stacked: float noise, not a difference
        return int(np.abs(pixels(a).astype(int) - pixels(b).astype(int)).max()) <= 2

    assert len(both) == 2
    assert close(both[0], first[0]) and close(both[1], second[1])
    assert not close(both[0], second[0])


def test_mask_from_inpaint_equals_drawing_the_inpaint_mask(webui: WebUI, model: str, repeatable_img2img: None):
    generate(webui.client, only_masked(), "img2img")  # the server's first inpaint differs from later ones
    plain = generate(webui.client, only_masked(), "img2img")[0]
    ours = generate(webui.client, with_units(only_masked(), unit(model, mask_from_inpaint=True)), "img2img")[0]
    drawn = generate(webui.client, with_units(only_masked(), unit(model, mask=left_quarter())), "img2img")[0]
    outside = generate(
        webui.client, with_units(only_masked(), unit(model, mask_from_inpaint=True, mask_invert=True)), "img2img"
    )[0]
    assert same_pixels(ours, drawn), "the inpaint mask as the region differs from drawing it"
    assert not same_pixels(ours, plain)
    assert not same_pixels(outside, ours), "inverting the inpaint mask changed nothing"


def test_txt2img_with_image_from_init_is_a_422_naming_the_unit(webui: WebUI, model: str):
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(txt2img_payload(), from_init(model)))
    assert answer.status == 422, answer.text[:2000]
    assert "IP-Adapter unit 1" in answer.text and "no input image" in answer.text
    assert generate(webui.client, txt2img_payload())  # and the server goes on


def test_the_infotext_says_the_reference_is_the_init_image(webui: WebUI, model: str):
    answer = webui.client.post("/sdapi/v1/img2img", with_units(img2img_payload(), from_init(model)))
    assert answer.status == 200, answer.text[:2000]
    info = answer.json()["info"]
    assert "images: init" in info and "image_from_init: yes" in info
