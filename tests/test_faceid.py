"""FaceID units through the A1111 doubles: face analysis on a tiny ONNX pack, tokens from the face
embedding (and FaceID-Plus's aligned crop through CLIP), errors naming the unit and image."""

from __future__ import annotations

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


@pytest.fixture
def faceid(webui, tmp_path):
    """The doubles' WebUI with the tiny face pack and tiny FaceID adapters in its model folders."""
    models = tmp_path / "models"
    write_pack(models / "insightface" / "models" / "buffalo_l")
    widths = attn2_widths(webui.unet)
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
    return webui


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
    from ipadapter_ext.core.face import FaceAnalyser
    from ipadapter_ext.host import a1111

    calls = {"n": 0}
    original = FaceAnalyser.largest

    def counting(self, image):
        calls["n"] += 1
        return original(self, image)

    monkeypatch.setattr(FaceAnalyser, "largest", counting)
    for _ in range(2):
        run_job(faceid.script, unit_args(unit("tiny-faceid-plus")), job(faceid.model, enable_hr=True))
    assert calls["n"] == 1 and len(a1111.engine().faces._found) == 1
