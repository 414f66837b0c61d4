"""Attention maps ("Show where each unit acts") against a real WebUI: extra images after the
generated ones, named as maps in ``info``, the generated images unchanged, one map per image and
unit, the final hires pass, and nothing left for the next request."""

from __future__ import annotations

import json

from .conftest import WebUI
from .http_client import Client, pixels
from .test_webui_http import latent_upscaler, same_pixels, txt2img_payload, unit, with_units
from .test_webui_regions import half_mask

HIRES = {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2, "denoising_strength": 0.5,
         "hr_additional_modules": ["Use same choices"]}  # fmt: skip


def answer(client: Client, payload: dict) -> tuple[list[str], list[str]]:
    """(images, infotexts) of a successful txt2img."""
    reply = client.post("/sdapi/v1/txt2img", payload)
    assert reply.status == 200, reply.text[:3000]
    body = reply.json()
    return body["images"], json.loads(body["info"])["infotexts"]


def maps_in(texts: list[str]) -> list[int]:
    return [i for i, t in enumerate(texts) if t.startswith("IP-Adapter attention map")]


def test_a_map_follows_the_image_which_is_unchanged(webui: WebUI, model: str):
    plain, _ = answer(webui.client, with_units(txt2img_payload(), unit(model)))
    images, texts = answer(webui.client, with_units(txt2img_payload(), unit(model, attention_map=True)))
    assert len(plain) == 1 and len(images) == 2 and maps_in(texts) == [1]
    assert "unit 1" in texts[1] and model in texts[1]
    assert same_pixels(images[0], plain[0])  # the generation is the same computation with or without
    (h, w, _), (mh, mw, _) = pixels(images[0]).shape, pixels(images[1]).shape
    assert mw == w and mh > h  # the image with a legend strip below
    after, after_texts = answer(webui.client, with_units(txt2img_payload(), unit(model)))
    assert len(after) == 1 and maps_in(after_texts) == [] and same_pixels(after[0], plain[0])


def test_two_masked_units_and_a_batch_get_a_map_each(webui: WebUI, model: str):
    units = (
        unit(model, mask=half_mask(False, (64, 64)), attention_map=True),
        unit(model, mask=half_mask(True, (64, 64))),
    )
    images, texts = answer(webui.client, with_units(txt2img_payload(batch_size=2), *units))
    assert len(images) == 2 + 2 * 2 and maps_in(texts) == [2, 3, 4, 5]
    left, right = pixels(images[2])[:64].astype(float), pixels(images[3])[:64].astype(float)
    # each unit's heat sits on its own half: its map differs from the image more there
    base = pixels(images[0]).astype(float)
    assert abs(left - base)[:, :32].mean() > abs(left - base)[:, 32:].mean()
    assert abs(right - base)[:, 32:].mean() > abs(right - base)[:, :32].mean()


def test_hires_shows_the_final_pass(webui: WebUI, model: str):
    hires = txt2img_payload(**HIRES, hr_upscaler=latent_upscaler(webui.client))
    images, texts = answer(webui.client, with_units(hires, unit(model, attention_map=True)))
    assert maps_in(texts) == [1] and pixels(images[1]).shape[1] == 128  # drawn over the 128 px final image
