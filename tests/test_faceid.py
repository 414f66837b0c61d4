"""FaceID units through the A1111 doubles: face analysis on a tiny ONNX pack, tokens from the face
embedding (and FaceID-Plus's aligned crop through CLIP), errors naming the unit and image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.load.formats import save_adapter_tensors
from tests.a1111_env import CTX, attn2_widths, job, no_hooks_left, run_job, unit_args
from tests.face_onnx import face_image, write_pack
from tests.factories import adapter_shapes, adapter_tensors

#: A photo with one "face" the tiny detector finds (a bright square on a dark ground).
FACE = Image.fromarray(face_image(320, 240, faces=[(120, 70, 100)], seed=1))
OTHER_FACE = Image.fromarray(face_image(320, 240, faces=[(60, 40, 110)], seed=2))
NO_FACE = Image.fromarray(face_image(320, 240, faces=[], seed=3))


def write_faceid_files(models, widths) -> None:
    """The tiny face pack and tiny FaceID adapters (with LoRA, Portrait, Plus) under ``models``."""
    write_pack(models / "insightface" / "models" / "buffalo_l")
    folder = models / "ipadapter"
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("faceid", CTX, widths, 0, lora_rank=4, tokens=4), seed=11),
        folder / "tiny-faceid.safetensors",
    )
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("faceid", CTX, widths, 0, tokens=4), seed=12), folder / "tiny-portrait.bin"
    )
    plus = adapter_shapes("faceid_plus", CTX, widths, 128, lora_rank=4, tokens=4)
    save_adapter_tensors(adapter_tensors(plus, seed=13), folder / "tiny-faceid-plus.safetensors")


@pytest.fixture
def faceid(webui, tmp_path):
    """The doubles' WebUI with the tiny face pack and tiny FaceID adapters in its model folders."""
    write_faceid_files(tmp_path / "models", attn2_widths(webui.unet))
    return webui


def png_b64_of(image: Image.Image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def count_detections(monkeypatch) -> dict[str, int]:
    """``{"n": …}``: how many times a face is detected (the analyser's ``largest``) from now on."""
    from ipadapter_ext.core.face import FaceAnalyser

    calls = {"n": 0}
    original = FaceAnalyser.largest

    def counting(self, image):
        calls["n"] += 1
        return original(self, image)

    monkeypatch.setattr(FaceAnalyser, "largest", counting)
    return calls


def unit(model: str, **fields) -> dict:
    return {"image": FACE, "model": model, "weight": 1.0, **fields}


@torch.no_grad()
@pytest.mark.parametrize("model", ["tiny-faceid", "tiny-portrait", "tiny-faceid-plus"])
def test_a_faceid_unit_changes_the_image_and_leaves_nothing(faceid, model):
    plain = run_job(faceid.script, unit_args(enabled=False), job(faceid.model))
    ours = run_job(faceid.script, unit_args(unit(model)), job(faceid.model))
    other = run_job(faceid.script, unit_args(unit(model, image=OTHER_FACE)), job(faceid.model))
    assert not torch.allclose(ours, plain) and not torch.allclose(ours, other)
    assert no_hooks_left(faceid.unet)
    assert torch.equal(run_job(faceid.script, unit_args(enabled=False), job(faceid.model)), plain)


@torch.no_grad()
def test_weight_zero_is_bit_identical_to_no_unit(faceid):
    plain = run_job(faceid.script, unit_args(enabled=False), job(faceid.model))
    zero = run_job(faceid.script, unit_args(unit("tiny-faceid", weight=0.0)), job(faceid.model))
    assert torch.equal(zero, plain)


def test_a_photo_without_a_face_names_the_unit_and_the_image(faceid):
    args = [unit("tiny-plus"), unit("tiny-faceid", image=[FACE, NO_FACE])]  # the API's form
    with pytest.raises(IPAdapterError, match=r"IP-Adapter unit 2, image 2: No face was found"):
        run_job(faceid.script, args, job(faceid.model))
    assert no_hooks_left(faceid.unet)


def test_a_missing_face_pack_names_the_folder_and_files(faceid, tmp_path):
    import shutil

    shutil.rmtree(tmp_path / "models" / "insightface")
    with pytest.raises(IPAdapterError, match=r"det_10g\.onnx.*w600k_r50\.onnx|w600k_r50\.onnx.*det_10g\.onnx"):
        run_job(faceid.script, unit_args(unit("tiny-faceid")), job(faceid.model))


def test_faces_are_detected_once_per_photo(faceid, monkeypatch):
    from ipadapter_ext.host import a1111

    calls = count_detections(monkeypatch)
    for _ in range(2):
        run_job(faceid.script, unit_args(unit("tiny-faceid-plus")), job(faceid.model, enable_hr=True))
    assert calls["n"] == 1 and len(a1111.engine().faces._found) == 1


@torch.no_grad()
def test_show_faces_returns_each_reference_with_its_face(faceid):
    p = job(faceid.model)
    run_job(faceid.script, [unit("tiny-faceid", image=[FACE, OTHER_FACE], show_faces=True)], p)
    generated = 1
    assert len(p.processed.images) == generated + 2
    shown = p.processed.images[generated]
    assert shown.height == 256 and shown.width > 256  # the reference with its box, then the crop
    assert p.processed.infotexts[generated].startswith("IP-Adapter detected face: unit 1, image 1, score")
    q = job(faceid.model)
    run_job(faceid.script, [unit("tiny-faceid", image=[FACE, OTHER_FACE])], q)
    assert len(q.processed.images) == generated


@torch.no_grad()
def test_encode_route_embeds_reuse_the_face_without_detecting_again(faceid, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ipadapter_ext.api.routes import register_routes
    from ipadapter_ext.host import a1111
    from ipadapter_ext.host.models import loaded_signature
    from tests.a1111_env import sd_model

    app = FastAPI()
    register_routes(app, a1111.engine, loaded_signature, lambda: a1111.placement(sd_model(faceid.unet), faceid.unet))
    client = TestClient(app)
    answer = client.post("/ipadapter/v1/encode", json={"image": png_b64_of(FACE), "model": "tiny-faceid-plus"})
    assert answer.status_code == 200, answer.text
    embeds = answer.json()["embeds"]
    calls = count_detections(monkeypatch)
    with_embeds = run_job(faceid.script, [{"model": "tiny-faceid-plus", "embeds": embeds}], job(faceid.model))
    with_image = run_job(faceid.script, [unit("tiny-faceid-plus", image=FACE)], job(faceid.model))
    assert calls["n"] == 0  # the photo's face was found by the encode call and is reused from the cache
    torch.testing.assert_close(with_embeds, with_image, rtol=1e-5, atol=1e-6)  # the PNG round trip


def test_faces_route_shows_boxes_and_crops(faceid):
    import base64
    import io

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ipadapter_ext.api.routes import register_routes
    from ipadapter_ext.host import a1111
    from ipadapter_ext.host.models import loaded_signature

    app = FastAPI()
    register_routes(app, a1111.engine, loaded_signature)
    client = TestClient(app)
    two = Image.fromarray(face_image(480, 240, faces=[(20, 60, 104), (340, 60, 104)], seed=4))
    answer = client.post("/ipadapter/v1/faces", json={"image": png_b64_of(two), "size": 112})
    assert answer.status_code == 200, answer.text
    faces = answer.json()["faces"]
    assert len(faces) == 2 and [f["largest"] for f in faces].count(True) == 1
    big = next(f for f in faces if f["largest"])
    assert big["box"][0] > 200 and len(big["kps"]) == 5
    crop = Image.open(io.BytesIO(base64.b64decode(big["crop"])))
    assert crop.size == (112, 112)
    none = client.post("/ipadapter/v1/faces", json={"image": png_b64_of(NO_FACE)})
    assert none.status_code == 200 and none.json()["faces"] == []
    bad = client.post("/ipadapter/v1/faces", json={"image": png_b64_of(two), "size": 100})
    assert bad.status_code == 422 and "size must be one of 112, 224, 256" in bad.text


def test_onnxruntime_is_installed_only_for_faceid(faceid, tmp_path, monkeypatch):
    from ipadapter_ext import face_setup

    models = tmp_path / "models"
    assert sorted(p.stem for p in face_setup.faceid_models([models / "ipadapter"])) == [
        "tiny-faceid",
        "tiny-faceid-plus",
        "tiny-portrait",
    ]
    assert face_setup.install_reason(models, {}) is None  # the test venv has onnxruntime
    monkeypatch.setattr(face_setup, "onnxruntime_present", lambda: False)
    assert face_setup.install_reason(models, {}) == "FaceID model tiny-faceid-plus.safetensors"
    empty = tmp_path / "empty"
    (empty / "ipadapter").mkdir(parents=True)
    assert face_setup.install_reason(empty, {}) is None
    assert face_setup.install_reason(empty, {"IPADAPTER_FACEID": "1"}) == "IPADAPTER_FACEID=1"
    # install.py runs at every WebUI start: the scan reads headers and pickle strings, never torch
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from ipadapter_ext.face_setup import faceid_models; "
        f"found = faceid_models([Path({str(models / 'ipadapter')!r})]); print(len(found), 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.stdout.split() == ["3", "False"], result.stderr


def test_the_info_line_says_what_a_faceid_model_needs(faceid, tmp_path):
    import shutil

    from ipadapter_ext.host.page import ui_hooks

    describe = ui_hooks().describe
    assert "face pack: buffalo_l" in describe("tiny-faceid", "auto")
    assert "face pack" not in describe("tiny-plus", "auto")
    shutil.rmtree(tmp_path / "models" / "insightface")
    assert "⚠" in describe("tiny-faceid", "auto") and "det_10g.onnx" in describe("tiny-faceid", "auto")


@torch.no_grad()
def test_a_faceid_lora_tag_in_the_prompt_is_said_to_apply_twice(faceid, capsys):
    p = job(faceid.model)
    p.prompt = "a portrait <lora:ip-adapter-faceid-plusv2_sd15_lora:0.6>, garden"
    run_job(faceid.script, unit_args(unit("tiny-faceid")), p)
    assert "<lora:ip-adapter-faceid-plusv2_sd15_lora:0.6>" in capsys.readouterr().out
    q = job(faceid.model)
    q.prompt = p.prompt
    run_job(faceid.script, unit_args(unit("tiny-faceid", lora_strength=0.0)), q)
    assert "applied twice" not in capsys.readouterr().out
