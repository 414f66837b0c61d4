"""XLabs Flux IP-Adapter units in a real Forge running a Flux checkpoint, over HTTP.

Opt-in twice: like the rest of the suite it needs ``WEBUI_ROOT`` or ``WEBUI_URL`` (see
``conftest.py``), and it is skipped unless that WebUI runs a Flux checkpoint:

* ``WEBUI_ROOT`` mode: ``WEBUI_CKPT`` must be a Flux checkpoint. The module writes a tiny random
  XLabs-format adapter sized to it (its double blocks, hidden and text-token widths) into
  ``models/ipadapter``, fed by the suite's tiny CLIP encoder (its image embeds are what the
  adapter's projection reads), and removes it afterwards unless ``WEBUI_E2E_KEEP=1``.
  A full Flux.1 runs too, slowly; the README says how to make a scratch Forge load a tiny one.
* ``WEBUI_URL`` mode: ``WEBUI_FLUX_IPADAPTER_MODEL`` names a Flux adapter that fits the server's
  checkpoint (and an encoder it finds with ``auto``).

Forge's API has no Flux defaults: requests set the "Simple" scheduler (with "Automatic", Forge
dfdcbab6 gives Euler sigmas on a 0–9999 timestep scale ending in two zeros, and NaN images) and
cfg 1 (distilled guidance) unless a test turns true CFG on. Images are 64×64, 3 steps, fixed seed; identity checks compare decoded pixels.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WebUI
from .http_client import pixels, png_b64
from .test_webui_http import REFERENCE, generate, same_pixels, txt2img_payload, unit, with_units
from .test_webui_regions import half_mask
from .webui import ADAPTER_FILE, FLUX_KEY, is_flux_checkpoint

FLUX_ADAPTER_FILE = "e2e-tiny-xlabs-flux.safetensors"
ENCODER_EMBEDS = 40  # the image-embeds width of the suite's tiny CLIP encoder (tests/test_encoder.py TINY)


def flux_payload(**overrides) -> dict:
    base = {"scheduler": "Simple", "cfg_scale": 1, "distilled_cfg_scale": 3.5}
    return txt2img_payload(**{**base, **overrides})


def flux_shapes(checkpoint: Path) -> tuple[int, int, int]:
    """(double blocks, hidden width, text-token width) of a Flux checkpoint, read from its shapes."""
    from safetensors import safe_open

    prefix = FLUX_KEY.split("double_blocks.")[0]
    with safe_open(str(checkpoint), framework="pt") as f:
        keys = list(f.keys())
        blocks = {int(k[len(prefix) :].split(".")[1]) for k in keys if k.startswith(prefix + "double_blocks.")}
        hidden, txt = f.get_slice(prefix + "txt_in.weight").get_shape()
    return len(blocks), hidden, txt


def write_flux_adapter(root: Path, checkpoint: Path) -> Path:
    from safetensors.torch import save_file

    from tests.flux_env import xlabs_tensors

    blocks, hidden, txt = flux_shapes(checkpoint)
    tensors = xlabs_tensors(4, blocks=blocks, seed=3, embed=ENCODER_EMBEDS, txt=txt, hidden=hidden)
    path = root / "models" / "ipadapter" / FLUX_ADAPTER_FILE
    tmp = path.with_name(path.name + ".part.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def listed_models(webui: WebUI) -> list[dict]:
    answer = webui.client.get("/ipadapter/v1/models?refresh=true")
    assert answer.status == 200, answer.text
    return answer.json()["models"]


@pytest.fixture(scope="module")
def flux(webui: WebUI) -> Iterator[str]:
    """The Flux adapter's model name; skips unless the WebUI runs a Flux checkpoint."""
    written: Path | None = None
    if webui.mode == "url":
        name = os.environ.get("WEBUI_FLUX_IPADAPTER_MODEL")
        if not name:
            pytest.skip(
                "Flux e2e against WEBUI_URL needs WEBUI_FLUX_IPADAPTER_MODEL (a Flux adapter for its checkpoint)"
            )
        found = [m for m in listed_models(webui) if m["name"] == name]
    else:
        assert webui.root is not None and webui.checkpoint is not None
        if not is_flux_checkpoint(webui.checkpoint):
            pytest.skip(f"the WebUI runs {webui.checkpoint.name}, not a Flux checkpoint (set WEBUI_CKPT to a Flux one)")
        written = write_flux_adapter(webui.root, webui.checkpoint)
        warm = webui.client.post("/sdapi/v1/txt2img", flux_payload(steps=1))  # Forge loads the checkpoint lazily
        assert warm.status == 200, warm.text[:3000]
        found = [m for m in listed_models(webui) if m["file"] == FLUX_ADAPTER_FILE]
    try:
        assert found, "the Flux adapter is not listed by GET /ipadapter/v1/models"
        entry = found[0]
        assert entry["compatible"] is True, f"{entry['name']}: {entry['reason'] or entry['error']}"
        yield entry["name"]
    finally:
        if written is not None and os.environ.get("WEBUI_E2E_KEEP") != "1":
            with contextlib.suppress(OSError):
                written.unlink()


@pytest.fixture(scope="module")
def flux_baseline(webui: WebUI, flux: str) -> str:
    return generate(webui.client, flux_payload())[0]


def test_flux_unit_changes_the_image_and_is_deterministic(webui: WebUI, flux: str, flux_baseline: str):
    payload = with_units(flux_payload(), unit(flux))
    first = generate(webui.client, payload)[0]
    second = generate(webui.client, payload)[0]
    assert pixels(first).shape == (64, 64, 3)
    assert not same_pixels(first, flux_baseline), "the Flux IP-Adapter unit did not change the image"
    assert first == second, "the same request twice gave different PNG bytes"


def test_flux_weight_zero_equals_the_baseline(webui: WebUI, flux: str, flux_baseline: str):
    image = generate(webui.client, with_units(flux_payload(), unit(flux, weight=0.0)))[0]
    assert same_pixels(image, flux_baseline)


def test_flux_request_without_unit_after_one_equals_the_baseline(webui: WebUI, flux: str, flux_baseline: str):
    generate(webui.client, with_units(flux_payload(), unit(flux)))
    after = generate(webui.client, flux_payload())[0]
    assert same_pixels(after, flux_baseline), "the unit's object patches or state leaked into the next request"


def test_flux_units_leave_the_hosts_list_of_loaded_models_as_they_found_it(webui: WebUI, flux: str):
    from .test_webui_memory import assert_units_leave_loaded_models

    plain = flux_payload(steps=2)
    assert_units_leave_loaded_models(webui, plain, lambda seed: with_units({**plain, "seed": seed}, unit(flux)))


def test_flux_batch_of_two(webui: WebUI, flux: str):
    plain = generate(webui.client, flux_payload(batch_size=2))
    images = generate(webui.client, with_units(flux_payload(batch_size=2), unit(flux)))
    assert len(plain) == 2 and len(images) == 2
    assert all(pixels(im).shape == (64, 64, 3) for im in images)
    assert not same_pixels(images[0], plain[0]) and not same_pixels(images[1], plain[1])


def test_flux_true_cfg_with_a_negative_prompt(webui: WebUI, flux: str, flux_baseline: str):
    true_cfg = flux_payload(cfg_scale=3, negative_prompt="blurry")
    plain = generate(webui.client, true_cfg)[0]
    assert not same_pixels(plain, flux_baseline), "cfg 3 with a negative prompt did not change the image"
    first = generate(webui.client, with_units(true_cfg, unit(flux)))[0]
    second = generate(webui.client, with_units(true_cfg, unit(flux)))[0]
    assert not same_pixels(first, plain), "the unit had no effect under true CFG"
    assert first == second
    assert same_pixels(generate(webui.client, with_units(true_cfg, unit(flux, weight=0.0)))[0], plain)


def test_flux_two_units(webui: WebUI, flux: str):
    one = generate(webui.client, with_units(flux_payload(), unit(flux, weight=0.8)))[0]
    two = generate(webui.client, with_units(flux_payload(), unit(flux, weight=0.8), unit(flux, weight=0.5)))[0]
    assert not same_pixels(one, two), "the second unit had no effect"
    again = generate(webui.client, with_units(flux_payload(), unit(flux, weight=0.8), unit(flux, weight=0.0)))[0]
    assert same_pixels(again, one), "a second unit at weight 0 changed the image"


def test_sd_adapter_on_flux_is_a_422_and_the_next_request_works(webui: WebUI, flux: str, flux_baseline: str):
    sd = [m for m in listed_models(webui) if m["file"] == ADAPTER_FILE]
    if not sd:
        pytest.skip(f"no SD IP-Adapter is listed to try on Flux (the suite writes {ADAPTER_FILE} in WEBUI_ROOT mode)")
    assert sd[0]["compatible"] is False, sd[0]
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(flux_payload(), unit(sd[0]["name"])))
    assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
    detail = answer.json().get("detail")
    assert isinstance(detail, str) and "Flux" in detail, answer.text[:3000]
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline)


def test_flux_start_end_window(webui: WebUI, flux: str, flux_baseline: str):
    full = generate(webui.client, with_units(flux_payload(), unit(flux)))[0]
    late = generate(webui.client, with_units(flux_payload(), unit(flux, start=0.5)))[0]
    assert not same_pixels(late, flux_baseline), "a unit acting on the second half of the steps changed nothing"
    assert not same_pixels(late, full), "start 0.5 gave the full-range image"


def test_flux_mask_and_infotext(webui: WebUI, flux: str):
    payload = flux_payload(width=96, height=64)
    plain = generate(webui.client, payload)[0]
    whole = generate(webui.client, with_units(payload, unit(flux)))[0]
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(payload, unit(flux, mask=half_mask(True))))
    assert answer.status == 200, answer.text[:3000]
    masked = answer.json()["images"][0]
    assert not same_pixels(masked, plain) and not same_pixels(masked, whole)
    info = json.loads(answer.json()["info"])["infotexts"][0]
    assert "e2e-tiny-xlabs-flux" in info and "mask: yes" in info, info


def test_flux_embeds_from_encode_equal_the_image(webui: WebUI, flux: str):
    encoded = webui.client.post("/ipadapter/v1/encode", {"image": REFERENCE, "model": flux})
    assert encoded.status == 200, encoded.text[:3000]
    assert encoded.json()["tokens"] == 4
    from_image = generate(webui.client, with_units(flux_payload(), unit(flux)))[0]
    embeds_unit = {"model": flux, "weight": 0.8, "embeds": encoded.json()["embeds"]}
    from_embeds = generate(webui.client, with_units(flux_payload(), embeds_unit))[0]
    assert same_pixels(from_embeds, from_image)


def test_flux_negative_image_acts_under_true_cfg_only(webui: WebUI, flux: str):
    true_cfg = flux_payload(cfg_scale=3, negative_prompt="blurry")
    negative = png_b64(80, seed=7)
    zero_neg = generate(webui.client, with_units(true_cfg, unit(flux)))[0]
    image_neg = generate(webui.client, with_units(true_cfg, unit(flux, negative_image=negative)))[0]
    assert not same_pixels(image_neg, zero_neg), "a negative image did not change the uncond rows under true CFG"
    distilled = generate(webui.client, with_units(flux_payload(), unit(flux)))[0]
    distilled_neg = generate(webui.client, with_units(flux_payload(), unit(flux, negative_image=negative)))[0]
    assert same_pixels(distilled_neg, distilled), "at cfg 1 (no uncond pass) the negative image changed the image"


def test_flux_weight_type_is_a_422(webui: WebUI, flux: str):
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(flux_payload(), unit(flux, weight_type="style transfer"))
    )
    assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
    assert "Flux" in answer.json()["detail"], answer.text[:3000]
