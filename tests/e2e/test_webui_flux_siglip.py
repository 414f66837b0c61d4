"""InstantX's Flux IP-Adapter and Flux Redux units in a real Forge running a Flux checkpoint, over
HTTP, with a tiny SigLIP; and Redux refused on an SD checkpoint (Forge or A1111).

``WEBUI_ROOT`` mode only (the files are written here): a tiny SigLIP (``tests/siglip_env.py``,
written with torch alone: the test venv's transformers has no SigLIP) into ``models/clip_vision``,
and a tiny InstantX ``.bin`` and a tiny Redux file sized to the checkpoint (its blocks, hidden and
text widths) into ``models/ipadapter``, removed afterwards unless ``WEBUI_E2E_KEEP=1``. Requests are
those of ``test_webui_flux.py`` (64×64, 3 steps, the "Simple" scheduler, cfg 1).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import WebUI
from .http_client import pixels
from .test_webui_flux import FLUX_ADAPTER_FILE, flux, flux_payload, flux_shapes, listed_models  # noqa: F401 (flux: a fixture)
from .test_webui_http import REFERENCE, generate, same_pixels, txt2img_payload, unit, with_units
from .test_webui_regions import half_mask
from .webui import FLUX_KEY, is_flux_checkpoint

SIGLIP_FILE = "e2e-tiny-siglip.safetensors"
INSTANTX_FILE = "e2e-tiny-instantx.bin"
REDUX_FILE = "e2e-tiny-redux.safetensors"
SIGLIP_WIDTH = 128  # tests/siglip_env.py's default tower: 4×4 patches of 14 px (16 Redux tokens)


def single_blocks(checkpoint: Path) -> int:
    from safetensors import safe_open

    prefix = FLUX_KEY.split("double_blocks.")[0]
    with safe_open(str(checkpoint), framework="pt") as f:
        names = [k[len(prefix) :] for k in f.keys() if k.startswith(prefix + "single_blocks.")]  # noqa: SIM118
    return len({n.split(".")[1] for n in names})


def _write(root: Path, checkpoint: Path | None) -> list[Path]:
    from safetensors.torch import save_file

    from tests.flux_env import instantx_tensors, redux_tensors
    from tests.siglip_env import save_siglip

    written = [save_siglip(root / "models" / "clip_vision" / SIGLIP_FILE, seed=7)]
    _, hidden, txt = flux_shapes(checkpoint) if checkpoint and is_flux_checkpoint(checkpoint) else (0, 64, 4096)
    redux = root / "models" / "ipadapter" / REDUX_FILE
    save_file({k: v.contiguous() for k, v in redux_tensors(embed=SIGLIP_WIDTH, txt=txt, seed=8).items()}, str(redux))
    written.append(redux)
    if checkpoint and is_flux_checkpoint(checkpoint):
        import torch

        blocks = flux_shapes(checkpoint)[0] + single_blocks(checkpoint)
        flat = instantx_tensors(tokens=4, blocks=blocks, seed=9, embed=SIGLIP_WIDTH, txt=txt, hidden=hidden)
        nested = {
            p: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(p + ".")}
            for p in ("image_proj", "ip_adapter")
        }
        path = root / "models" / "ipadapter" / INSTANTX_FILE
        torch.save(nested, str(path))  # as InstantX ships it: a pickle, read weights-only
        written.append(path)
    return written


@contextlib.contextmanager
def _files(webui: WebUI) -> Iterator[list[Path]]:
    assert webui.root is not None
    written = _write(webui.root, webui.checkpoint)
    try:
        yield written
    finally:
        if os.environ.get("WEBUI_E2E_KEEP") != "1":
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()


@pytest.fixture(scope="module")
def siglip(webui: WebUI, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Model names: InstantX, Redux, the XLabs one of test_webui_flux.py, and the SigLIP encoder."""
    request.getfixturevalue("flux")  # skips unless the WebUI runs a Flux checkpoint; writes the XLabs file
    if webui.mode != "root":
        pytest.skip("the InstantX/Redux e2e writes its tiny files into WEBUI_ROOT (not available with WEBUI_URL)")
    with _files(webui):
        models = {m["file"]: m for m in listed_models(webui)}
        for file in (INSTANTX_FILE, REDUX_FILE):
            assert file in models, f"{file} is not listed by GET /ipadapter/v1/models"
            assert models[file]["compatible"] is True, models[file]
        encoders = webui.client.get("/ipadapter/v1/encoders").json()["encoders"]
        found = [e for e in encoders if e["file"] == SIGLIP_FILE]
        assert found and found[0]["family"] == "siglip", encoders
        yield {
            "instantx": models[INSTANTX_FILE]["name"],
            "redux": models[REDUX_FILE]["name"],
            "xlabs": models[FLUX_ADAPTER_FILE]["name"],
            "siglip": found[0]["name"],
        }


@pytest.fixture(scope="module")
def flux_baseline(webui: WebUI, siglip: dict) -> str:
    return generate(webui.client, flux_payload())[0]


def _log(webui: WebUI) -> str:
    return webui.log_path.read_text(errors="replace") if webui.log_path else ""


def _info(answer) -> str:
    return json.loads(answer.json()["info"])["infotexts"][0]


def test_instantx_unit_changes_the_image_and_zero_is_the_baseline(webui: WebUI, siglip: dict, flux_baseline: str):
    payload = with_units(flux_payload(), unit(siglip["instantx"]))
    first, second = generate(webui.client, payload)[0], generate(webui.client, payload)[0]
    assert pixels(first).shape == (64, 64, 3)
    assert not same_pixels(first, flux_baseline), "the InstantX unit did not change the image"
    assert first == second, "the same request twice gave different PNG bytes"
    assert same_pixels(
        generate(webui.client, with_units(flux_payload(), unit(siglip["instantx"], weight=0.0)))[0], flux_baseline
    )
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline), "the InstantX patches leaked"
    assert "InstantX Flux IP-Adapter" in _log(webui) and f"{siglip['instantx']} + {siglip['siglip']}" in _log(webui)


def test_redux_unit_adds_context_tokens_and_strength_zero_is_the_baseline(
    webui: WebUI, siglip: dict, flux_baseline: str
):
    answer = webui.client.post("/sdapi/v1/txt2img", with_units(flux_payload(), unit(siglip["redux"], weight=1.0)))
    assert answer.status == 200, answer.text[:3000]
    first = answer.json()["images"][0]
    assert not same_pixels(first, flux_baseline), "the Redux unit did not change the image"
    assert generate(webui.client, with_units(flux_payload(), unit(siglip["redux"], weight=1.0)))[0] == first
    assert "context_tokens: 16" in _info(answer), _info(answer)
    assert "16 context tokens added" in _log(webui)
    for zero in ({}, {"redux_strength_mode": "attention bias"}):
        image = generate(webui.client, with_units(flux_payload(), unit(siglip["redux"], weight=0.0, **zero)))[0]
        assert same_pixels(image, flux_baseline)
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline), "the Redux tokens leaked"


def test_redux_strength_modes_and_downsampling(webui: WebUI, siglip: dict, flux_baseline: str):
    scale = generate(webui.client, with_units(flux_payload(), unit(siglip["redux"], weight=0.5)))[0]
    bias = generate(
        webui.client,
        with_units(flux_payload(), unit(siglip["redux"], weight=0.5, redux_strength_mode="attention bias")),
    )[0]
    assert not same_pixels(scale, bias) and not same_pixels(bias, flux_baseline)
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(flux_payload(), unit(siglip["redux"], weight=1.0, redux_downsample=2, redux_downsample_mode="bicubic"))
    )  # fmt: skip
    assert answer.status == 200, answer.text[:3000]
    info = _info(answer)
    assert "context_tokens: 4" in info and "redux_downsample: 2" in info and "redux_downsample_mode: bicubic" in info, (
        info
    )
    assert not same_pixels(answer.json()["images"][0], flux_baseline)


@pytest.mark.parametrize("kind", ["instantx", "redux"])
def test_mask_and_infotext(webui: WebUI, siglip: dict, kind: str):
    payload = flux_payload(width=96, height=64)
    plain = generate(webui.client, payload)[0]
    whole = generate(webui.client, with_units(payload, unit(siglip[kind], weight=1.0)))[0]
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(payload, unit(siglip[kind], weight=1.0, mask=half_mask(True)))
    )
    assert answer.status == 200, answer.text[:3000]
    masked = answer.json()["images"][0]
    assert not same_pixels(masked, plain) and not same_pixels(masked, whole)
    assert "mask: yes" in _info(answer) and siglip[kind] in _info(answer)


def test_redux_instantx_and_xlabs_in_one_request(webui: WebUI, siglip: dict, flux_baseline: str):
    units = [unit(siglip["redux"], weight=0.8), unit(siglip["instantx"], weight=0.8), unit(siglip["xlabs"], weight=0.8)]
    mixed = generate(webui.client, with_units(flux_payload(), *units))[0]
    assert generate(webui.client, with_units(flux_payload(), *units))[0] == mixed
    for i in range(3):
        alone = generate(webui.client, with_units(flux_payload(), units[i]))[0]
        assert not same_pixels(mixed, alone)
    no_ix = [units[0], {**units[1], "weight": 0.0}, units[2]]
    assert same_pixels(generate(webui.client, with_units(flux_payload(), *no_ix))[0],
                       generate(webui.client, with_units(flux_payload(), units[0], units[2]))[0])  # fmt: skip
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline)


def test_a_clip_encoder_for_instantx_is_a_422_naming_siglip(webui: WebUI, siglip: dict, flux_baseline: str):
    clip = [e["name"] for e in webui.client.get("/ipadapter/v1/encoders").json()["encoders"] if e["family"] == "clip"]
    assert clip, "the suite's tiny CLIP encoder is not listed"
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(flux_payload(), unit(siglip["instantx"], encoder=clip[0]))
    )
    assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
    detail = answer.json()["detail"]
    assert "it is a CLIP encoder" in detail and "SigLIP" in detail, detail
    redux_embeds = webui.client.post("/ipadapter/v1/encode", {"image": REFERENCE, "model": siglip["redux"]})
    assert redux_embeds.status == 422 and "no embeds to make" in redux_embeds.json()["detail"], redux_embeds.text[:3000]
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline)


def test_redux_on_an_sd_checkpoint_is_a_422(webui: WebUI):
    """On an SD checkpoint (Forge or A1111): the SigLIP models are listed, and refused in words."""
    if webui.mode != "root":
        pytest.skip("writes its tiny files into WEBUI_ROOT (not available with WEBUI_URL)")
    if webui.checkpoint is not None and is_flux_checkpoint(webui.checkpoint):
        pytest.skip("the WebUI runs a Flux checkpoint: the Redux-on-SD refusal needs an SD one")
    with _files(webui):
        models = {m["file"]: m for m in listed_models(webui)}
        assert REDUX_FILE in models and models[REDUX_FILE]["compatible"] is False, models.get(REDUX_FILE)
        answer = webui.client.post("/sdapi/v1/txt2img", with_units(txt2img_payload(), unit(models[REDUX_FILE]["name"])))
        assert answer.status == 422, f"expected 422, got {answer.status}: {answer.text[:3000]}"
        detail = answer.json()["detail"]
        assert "Flux Redux" in detail and "Flux checkpoint" in detail, detail
