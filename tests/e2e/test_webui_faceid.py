"""FaceID units in a real WebUI: the tiny ONNX face pack of tests/face_onnx.py and tiny FaceID
adapters sized to the checkpoint, written into the install (``WEBUI_ROOT`` mode) and removed after.

Needs onnxruntime in the WebUI's venv (what ``install.py`` installs when a FaceID model is
present); without it the tests are skipped, saying so.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from .conftest import WebUI
from .test_webui_http import generate, same_pixels, txt2img_payload, with_units
from .webui import checkpoint_attn2, is_flux_checkpoint, new_dirs

FACEID, PLUS_V2 = "e2e-tiny-faceid", "e2e-tiny-faceid-plusv2"


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def faceid(webui: WebUI) -> Iterator[dict[str, str]]:
    if webui.mode != "root" or webui.root is None or webui.checkpoint is None:
        pytest.skip("FaceID e2e tests write their face pack into the install: run them with WEBUI_ROOT")
    if is_flux_checkpoint(webui.checkpoint):
        pytest.skip(f"{webui.checkpoint.name} is a Flux checkpoint: FaceID adapters are for SD1.5/SDXL UNets")
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.face_onnx import face_image, write_pack
    from tests.factories import adapter_shapes, adapter_tensors

    root = webui.root
    pack = root / "models" / "insightface" / "models" / "buffalo_l"
    created_pack = not pack.exists()
    made = new_dirs(pack) if created_pack else []  # the folders this fixture creates, outermost first
    ctx, widths = checkpoint_attn2(webui.checkpoint)
    files = [root / "models" / "ipadapter" / f"{FACEID}.safetensors", root / "models" / "ipadapter" / f"{PLUS_V2}.bin"]
    try:
        if created_pack:
            write_pack(pack, with_landmark=False)
        faceid_shapes = adapter_shapes("faceid", ctx, widths, 0, lora_rank=4, tokens=4)
        save_adapter_tensors(adapter_tensors(faceid_shapes, seed=21), files[0])
        plus = adapter_shapes("faceid_plus", ctx, widths, 128, lora_rank=4, tokens=4)
        save_adapter_tensors(adapter_tensors(plus, seed=22), files[1])
        probe = webui.client.post("/ipadapter/v1/faces", {"image": png(face_image(64, 64, [], seed=0))})
        if probe.status == 422 and "onnxruntime" in probe.text:
            pytest.skip(f"the WebUI's venv has no onnxruntime ({probe.text[:200]}); pip install onnxruntime there")
        assert probe.status == 200, probe.text
        listed = webui.client.get("/ipadapter/v1/models?refresh=true").json()["models"]
        assert {FACEID, PLUS_V2} <= {m["name"] for m in listed}, listed
        yield {
            "face": png(face_image(320, 240, faces=[(120, 70, 100)], seed=1)),
            "no_face": png(face_image(320, 240, faces=[], seed=3)),
        }
    finally:
        if os.environ.get("WEBUI_E2E_KEEP") != "1":
            for path in files:
                path.unlink(missing_ok=True)
            if made:
                shutil.rmtree(made[0], ignore_errors=True)  # only what this fixture created


def unit(photos: dict, model: str = FACEID, **fields) -> dict:
    return {"image": photos["face"], "model": model, "weight": 1.0, **fields}


def test_a_faceid_unit_changes_the_image_and_its_lora_comes_off(webui: WebUI, faceid: dict):
    plain = generate(webui.client, txt2img_payload())[0]
    ours = generate(webui.client, with_units(txt2img_payload(), unit(faceid)))[0]
    again = generate(webui.client, with_units(txt2img_payload(), unit(faceid)))[0]
    after = generate(webui.client, txt2img_payload())[0]
    assert not same_pixels(ours, plain) and same_pixels(ours, again)
    assert same_pixels(after, plain), "the request after a FaceID unit differs: its LoRA was left on the UNet"


def test_weight_zero_is_bit_identical_to_no_unit(webui: WebUI, faceid: dict):
    plain = generate(webui.client, txt2img_payload())[0]
    zero = generate(webui.client, with_units(txt2img_payload(), unit(faceid, weight=0.0)))[0]
    assert same_pixels(zero, plain)


def test_the_lora_strength_matters(webui: WebUI, faceid: dict):
    full = generate(webui.client, with_units(txt2img_payload(), unit(faceid, lora_strength=1.0)))[0]
    none = generate(webui.client, with_units(txt2img_payload(), unit(faceid, lora_strength=0.0)))[0]
    assert not same_pixels(full, none)


def test_plus_v2_with_the_detected_face_returned(webui: WebUI, faceid: dict):
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(txt2img_payload(), unit(faceid, PLUS_V2, show_faces=True, faceid_v2_weight=1.5))
    )
    assert answer.status == 200, answer.text[:2000]
    body = answer.json()
    assert len(body["images"]) == 2  # the generated image, then the reference with its face
    import json

    infotexts = json.loads(body["info"])["infotexts"]
    assert infotexts[-1].startswith("IP-Adapter detected face: unit 1, image 1")
    assert "faceid_v2_weight: 1.5" in infotexts[0]


def test_a_photo_without_a_face_is_a_422_naming_the_unit_and_image(webui: WebUI, faceid: dict):
    answer = webui.client.post(
        "/sdapi/v1/txt2img", with_units(txt2img_payload(), unit(faceid, image=[faceid["face"], faceid["no_face"]]))
    )
    assert answer.status == 422, answer.text[:2000]
    assert "IP-Adapter unit 1, image 2: No face was found" in answer.text
    assert generate(webui.client, txt2img_payload())  # and the server goes on
