"""A real WebUI over HTTP: the extension's routes, and txt2img/img2img with an IP-Adapter unit.

Opt-in: every test here is skipped unless ``WEBUI_URL`` or ``WEBUI_ROOT`` is set (see
``conftest.py``). Images are tiny (64×64, 3 Euler steps, fixed seed) so a CPU WebUI with a tiny
checkpoint runs the whole file in about a minute; identity checks compare decoded pixels exactly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from .conftest import WebUI
from .http_client import Client, pixels, png_b64
from .webui import SCRIPT_TITLE

REFERENCE = png_b64(96, seed=0)
INIT_IMAGE = png_b64(64, seed=1)


def txt2img_payload(**overrides) -> dict:
    payload = {
        "prompt": "a photo of a cat",
        "negative_prompt": "",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "subseed": -1,
        "sampler_name": "Euler",
        "cfg_scale": 5,
        "batch_size": 1,
        "n_iter": 1,
    }
    payload.update(overrides)
    return payload


def img2img_payload(**overrides) -> dict:
    return txt2img_payload(init_images=[INIT_IMAGE], denoising_strength=0.75, **overrides)


def unit(model: str, weight=0.8, **fields) -> dict:
    return {"image": REFERENCE, "model": model, "weight": weight, **fields}


def with_units(payload: dict, *units: dict) -> dict:
    scripts = dict(payload.get("alwayson_scripts", {}))
    scripts[SCRIPT_TITLE] = {"args": list(units)}
    return {**payload, "alwayson_scripts": scripts}


def generate(client: Client, payload: dict, route: str = "txt2img") -> list[str]:
    """The base64 images of a successful generation."""
    answer = client.post(f"/sdapi/v1/{route}", payload)
    assert answer.status == 200, f"{route} answered {answer.status}: {answer.text[:3000]}"
    images = answer.json()["images"]
    assert images and all(isinstance(im, str) for im in images)
    return images


_UPSCALERS: dict[str, str] = {}


def latent_upscaler(client: Client) -> str:
    """A latent hires upscaler this WebUI lists: "Latent" (A1111, Forge, reForge, Forge Classic),
    else its antialiased one (ersatzForge kept only "Latent (antialiased)" and "Latent (NeuralNet)",
    which needs a model file)."""
    if client.base_url not in _UPSCALERS:
        answer = client.get("/sdapi/v1/latent-upscale-modes")
        assert answer.status == 200, answer.text
        names = [m["name"] for m in answer.json()]
        preferred = ["Latent", "Latent (antialiased)"] + [n for n in names if n.startswith("Latent")]
        found = [n for n in preferred if n in names]
        assert found, f"the WebUI lists no latent hires upscaler: {names}"
        _UPSCALERS[client.base_url] = found[0]
    return _UPSCALERS[client.base_url]


def same_pixels(a: str, b: str) -> bool:
    pa, pb = pixels(a), pixels(b)
    return pa.shape == pb.shape and np.array_equal(pa, pb)


@pytest.fixture(scope="session")
def baseline(webui: WebUI) -> str:
    """txt2img without a unit, taken before any test sent one (the route tests send none)."""
    return generate(webui.client, txt2img_payload())[0]


# ------------------------------------------------------------------------------------------ routes


def test_version_route(webui: WebUI):
    answer = webui.client.get("/ipadapter/v1/version")
    assert answer.status == 200, answer.text
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body["version"], str) and body["version"]


def test_models_route(webui: WebUI, model: str):
    answer = webui.client.get("/ipadapter/v1/models")
    assert answer.status == 200, answer.text
    models = answer.json()["models"]
    assert isinstance(models, list) and models
    keys = {"name", "file", "kind", "base", "context_dim", "layers", "tokens", "compatible", "reason", "error"}
    for entry in models:
        assert keys <= set(entry), f"missing {keys - set(entry)} in {entry}"
        assert "/" not in entry["file"] and "\\" not in entry["file"]  # names only, never server paths
    chosen = next(m for m in models if m["name"] == model)
    assert chosen["compatible"] is True and chosen["error"] is None


# ---------------------------------------------------------------------------------------- txt2img


def test_txt2img_unit_changes_the_image_and_is_deterministic(webui: WebUI, model: str, baseline: str):
    payload = with_units(txt2img_payload(), unit(model))
    first = generate(webui.client, payload)[0]
    second = generate(webui.client, payload)[0]
    assert not same_pixels(first, baseline), "the IP-Adapter unit did not change the image"
    assert first == second, "the same request twice gave different PNG bytes"


def test_weight_zero_equals_the_baseline(webui: WebUI, model: str, baseline: str):
    image = generate(webui.client, with_units(txt2img_payload(), unit(model, weight=0.0)))[0]
    assert same_pixels(image, baseline)


def test_request_without_unit_after_one_with_it_equals_the_baseline(webui: WebUI, model: str, baseline: str):
    generate(webui.client, with_units(txt2img_payload(), unit(model)))
    after = generate(webui.client, txt2img_payload())[0]
    assert same_pixels(after, baseline), "a unit's hooks or state leaked into the next request"


def test_batch_of_two(webui: WebUI, model: str):
    plain = generate(webui.client, txt2img_payload(batch_size=2))
    images = generate(webui.client, with_units(txt2img_payload(batch_size=2), unit(model)))
    assert len(plain) == 2 and len(images) == 2
    assert all(pixels(im).shape == (64, 64, 3) for im in images)
    assert not same_pixels(images[0], plain[0]) and not same_pixels(images[1], plain[1])


def test_hires_fix(webui: WebUI, model: str):
    hires = {
        "enable_hr": True,
        "hr_scale": 2,
        "hr_second_pass_steps": 2,
        "denoising_strength": 0.5,
        "hr_upscaler": latent_upscaler(webui.client),
        "hr_additional_modules": ["Use same choices"],  # Forge's API fails on None; A1111 ignores it
    }
    plain = generate(webui.client, txt2img_payload(**hires))[0]
    image = generate(webui.client, with_units(txt2img_payload(**hires), unit(model)))[0]
    assert pixels(image).shape == (128, 128, 3)
    assert not same_pixels(image, plain)


def test_malformed_unit_is_a_422_naming_the_field_and_the_next_request_works(webui: WebUI, model: str, baseline: str):
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(txt2img_payload(), unit(model, weight="heavy")))
    assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
    detail = answer.json().get("detail")
    assert isinstance(detail, str) and "weight" in detail, answer.text[:3000]
    good = generate(webui.client, with_units(txt2img_payload(), unit(model)))[0]
    assert not same_pixels(good, baseline)
    assert same_pixels(generate(webui.client, txt2img_payload())[0], baseline)


# ---------------------------------------------------------------------------------------- img2img


def test_img2img_with_a_unit(webui: WebUI, model: str):
    plain = generate(webui.client, img2img_payload(), "img2img")[0]
    image = generate(webui.client, with_units(img2img_payload(), unit(model)), "img2img")[0]
    assert pixels(image).shape == (64, 64, 3)
    assert not same_pixels(image, plain)


# ------------------------------------------------------------------------------------- ControlNet


def test_together_with_controlnet(webui: WebUI, model: str):
    """A ControlNet unit and ours in one request: sd-webui-controlnet on A1111, the built-in one
    (``sd_forge_controlnet``, which serves ``/controlnet/model_list`` but no ``/controlnet/version``)
    on the Forge family."""
    listed = webui.client.get("/controlnet/model_list")
    if listed.status != 200:
        pytest.skip(f"this WebUI has no ControlNet API (GET /controlnet/model_list: {listed.status})")
    builtin = webui.client.get("/controlnet/version").status != 200
    names = [m for m in listed.json().get("model_list", []) if m not in ("None", "none")]
    cn_model = os.environ.get("WEBUI_CONTROLNET_MODEL") or (names[0] if names else None)
    if not cn_model:
        pytest.skip(
            f"{'the built-in ControlNet' if builtin else 'sd-webui-controlnet'} lists no ControlNet model: "
            "put one for this checkpoint's base in models/ControlNet or set WEBUI_CONTROLNET_MODEL"
        )
    module = "None" if builtin else "none"  # "no preprocessor": the built-in's name, sd-webui-controlnet's
    cn_unit = {"enabled": True, "image": INIT_IMAGE, "module": module, "model": cn_model, "weight": 1.0}
    cn_only = txt2img_payload(alwayson_scripts={"ControlNet": {"args": [cn_unit]}})
    plain = generate(webui.client, cn_only)
    assert not same_pixels(plain[0], generate(webui.client, txt2img_payload())[0]), "the ControlNet unit had no effect"
    both = generate(webui.client, with_units(cn_only, unit(model)))
    assert not same_pixels(both[0], plain[0]), "the IP-Adapter unit had no effect next to a ControlNet unit"
    assert same_pixels(generate(webui.client, cn_only)[0], plain[0]), "state leaked between ControlNet requests"
