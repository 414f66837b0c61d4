"""InstantID in our units and on the faces route.

* ``InstantX/InstantID``'s ``ip-adapter.bin`` (a Resampler from antelopev2's raw 512-d face
  embedding to 16 tokens, 70 SDXL layers) is recognised from its tensors, under its bare name;
* its tokens equal diffusers' ``IPAdapterPlusImageProjection`` fed the embedding as a one-token
  sequence (how InstantID's pipeline calls its Resampler), uncond from the zero embedding;
* a unit with it analyses faces with the antelopev2 pack (whatever pack the settings choose) and
  feeds the raw embedding;
* ``POST /ipadapter/v1/faces`` with ``keypoints_image`` returns exactly the picture ControlNet's
  ``instant_id_face_keypoints`` makes (tests/doubles/sd-webui-controlnet with insightface).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from diffusers.loaders.unet import UNet2DConditionLoadersMixin
from PIL import Image

from ipadapter_ext.core.errors import ModelFileError
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.detect import EncoderOutput, ProjectionKind, detect_adapter
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.core.project.projections import EncodedImages
from tests.face_onnx import face_image
from tests.factories import SDXL_WIDTHS, adapter_shapes, adapter_tensors, image_proj_shapes, random_tensors

#: InstantID's image_proj: Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16,
#: embedding_dim=512, output_dim=2048, ff_mult=4).
INSTANTID = dict(tokens=16, res_dim=1280, inner=1280)


def instantid_shapes(ctx: int = 2048, widths=SDXL_WIDTHS, face: int = 512, **kw):
    return adapter_shapes("resampler", ctx, widths, face, **{**INSTANTID, **kw})


# --- recognition ----------------------------------------------------------------------------------


def test_instantid_adapter_is_recognised_from_its_tensors():
    info = detect_adapter(instantid_shapes(), "ip-adapter.bin")
    assert info.variant == "instantid" and info.kind is ProjectionKind.RESAMPLER
    assert (info.tokens, info.num_layers, info.family, info.context_dim) == (16, 70, "SDXL", 2048)
    assert info.encoder.output is EncoderOutput.FACE and info.encoder.width == 512
    assert info.params["heads"] == 20 and info.params["dim_head"] == 64 and info.params["depth"] == 4
    text = info.describe()
    assert text.startswith(
        "InstantID (IP part) · SDXL · 16 tokens · needs a face embedding (insightface's antelopev2 pack)"
    )
    assert "antelopev2" in text and "IdentityNet ControlNet" in text
    # The same tensors named as cubiq's Portrait-unnorm are that model (buffalo_l, no ControlNet).
    unnorm = detect_adapter(instantid_shapes(), "ip-adapter-faceid-portrait_sdxl_unnorm.bin")
    assert unnorm.variant == "portrait-unnorm" and "IdentityNet" not in unnorm.describe()
    assert "antelopev2" not in unnorm.describe()
    # CLIP Resamplers stay Plus whatever their name; face variants only fit face Resamplers.
    plus = detect_adapter(instantid_shapes(face=1280), "my-instant-plus.bin")
    assert plus.variant == "plus" and plus.encoder.output is EncoderOutput.PENULTIMATE
    with pytest.raises(ModelFileError, match="cannot be 'plus'.*'instantid', 'portrait-unnorm'"):
        detect_adapter(instantid_shapes(), "ip-adapter.bin", override="plus")
    with pytest.raises(ModelFileError, match="cannot be 'instantid'"):
        detect_adapter(instantid_shapes(face=1280), "plus.bin", override="instantid")


def _diffusers(image_proj: dict[str, torch.Tensor]):
    return UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, dict(image_proj), low_cpu_mem_usage=False
    ).eval()


@pytest.mark.parametrize("size", ["tiny", "instantid"])
@torch.no_grad()
def test_instantid_tokens_equal_diffusers_resampler(size):
    """InstantID's pipeline: ``image_proj_model(embedding.reshape(1, -1, 512))``, uncond from
    ``zeros_like``; diffusers' converted module is the independent implementation."""
    if size == "tiny":
        proj = image_proj_shapes("resampler", 32, 512, tokens=16, res_dim=64, inner=128)
    else:  # InstantID's real projection (80 M parameters)
        proj = image_proj_shapes("resampler", 2048, 512, **INSTANTID)
    flat = random_tensors(proj, seed=4)
    image_proj = {k[len("image_proj.") :]: v for k, v in flat.items()}
    ctx = image_proj["proj_out.weight"].shape[0]
    ip_layers = {
        "1.to_k_ip.weight": torch.zeros(8, ctx),
        "1.to_v_ip.weight": torch.zeros(8, ctx),
    }
    from ipadapter_ext.core.load.formats import AdapterTensors

    ours = IPAdapterModel.from_tensors(AdapterTensors(image_proj, ip_layers), "ip-adapter.bin")
    assert ours.info.variant == "instantid"
    theirs = _diffusers(image_proj)
    g = torch.Generator().manual_seed(5)
    faces = torch.randn(2, 512, generator=g) * 12  # raw ArcFace embeddings have norms around 20
    expected = theirs(faces[:, None])
    got = ours.project(EncodedImages(face=faces))
    assert got.shape == expected.shape == (2, 16, ctx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    uncond = ours.project(ours.negative_inputs(EncodedImages(face=faces), None))
    torch.testing.assert_close(uncond, theirs(torch.zeros(2, 1, 512)), atol=1e-5, rtol=0)
    del theirs, ours


# --- a unit --------------------------------------------------------------------------------------


def test_an_instantid_unit_uses_antelopev2s_raw_embedding(webui, tmp_path):
    """With buffalo_l chosen in the settings, the InstantID unit still analyses with antelopev2."""
    from ipadapter_ext.core.engine import Placement, UnitRequest
    from ipadapter_ext.core.face import FaceAnalyser, find_pack
    from ipadapter_ext.host import a1111
    from tests.a1111_env import CTX, attn2_widths
    from tests.face_hosts import write_packs

    models = write_packs(tmp_path / "models")
    widths = attn2_widths(webui.unet)
    save_adapter_tensors(
        adapter_tensors(instantid_shapes(CTX, widths, res_dim=64, inner=128), seed=9),
        models / "ipadapter" / "ip-adapter.bin",
    )
    engine = a1111.engine()
    entry = engine.registry.adapter("ip-adapter")
    assert entry.info is not None and entry.info.variant == "instantid", entry.error
    photo = Image.fromarray(face_image(640, 480, [(96, 64, 40), (320, 224, 112)], seed=3))
    req = UnitRequest(number=1, images=[photo], model="ip-adapter")
    adapter, encoder, cond, uncond = engine.tokens(req, Placement(torch.device("cpu"), torch.float32))
    assert encoder == "face analysis"
    roots = [models]
    antelope = FaceAnalyser(find_pack(roots, "antelopev2")).largest(np.asarray(photo))
    buffalo = FaceAnalyser(find_pack(roots, "buffalo_l")).largest(np.asarray(photo))
    expected = adapter.project(EncodedImages(face=torch.from_numpy(antelope.embedding)[None]))
    torch.testing.assert_close(cond, expected.reshape(1, -1, CTX))
    torch.testing.assert_close(uncond, adapter.project(EncodedImages(face=torch.zeros(1, 512))).reshape(1, -1, CTX))
    for other in (antelope.normed_embedding, buffalo.embedding):  # the pack and the raw form both matter
        assert not torch.allclose(cond, adapter.project(EncodedImages(face=torch.from_numpy(other)[None])))


# --- the faces route ------------------------------------------------------------------------------


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


@pytest.fixture
def faces_client(webui, controlnet):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ipadapter_ext.api.routes import register_routes
    from ipadapter_ext.host import a1111
    from ipadapter_ext.host.models import loaded_signature

    app = FastAPI()
    register_routes(app, a1111.engine, loaded_signature)
    return TestClient(app)


@pytest.mark.parametrize("res", [512, 768])
def test_faces_route_keypoints_image_equals_controlnets_preprocessor(faces_client, controlnet, res):
    pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
    from tests.test_faceid import png_b64_of

    for width, height, faces in ((800, 600, [(120, 80, 50), (400, 260, 150)]), (320, 240, [(120, 70, 60)])):
        photo = face_image(width, height, faces, seed=3)
        ref = controlnet.load().get("instant_id_face_keypoints")(photo, resolution=res)  # with insightface
        answer = faces_client.post(
            "/ipadapter/v1/faces",
            json={"image": png_b64_of(Image.fromarray(photo)), "keypoints_image": True, "keypoints_resolution": res},
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["keypoints_resolution"] == res and body["faces"]
        np.testing.assert_array_equal(_decode(body["keypoints_image"]), ref)
    plain = faces_client.post("/ipadapter/v1/faces", json={"image": png_b64_of(Image.fromarray(photo))})
    assert "keypoints_image" not in plain.json()


def test_faces_route_keypoints_errors(faces_client, controlnet):
    import shutil

    from tests.test_faceid import png_b64_of

    photo = png_b64_of(Image.fromarray(face_image(320, 240, [(120, 70, 60)], seed=3)))
    for bad, message in (
        ({"keypoints_image": "yes"}, "keypoints_image must be true or false"),
        ({"keypoints_image": True, "keypoints_resolution": 10}, "keypoints_resolution must be a whole number from 64"),
        ({"keypoints_image": True, "keypoints_resolution": 512.5}, "keypoints_resolution must be a whole number"),
    ):
        answer = faces_client.post("/ipadapter/v1/faces", json={"image": photo, **bad})
        assert answer.status_code == 422 and message in answer.text, answer.text
    blank = png_b64_of(Image.fromarray(face_image(320, 240, [], seed=3)))
    answer = faces_client.post("/ipadapter/v1/faces", json={"image": blank, "keypoints_image": True})
    assert answer.status_code == 422 and "keypoints_image: at resolution 512" in answer.text
    assert "No face was found" in answer.text
    shutil.rmtree(controlnet.models / "insightface" / "models" / "antelopev2")
    answer = faces_client.post("/ipadapter/v1/faces", json={"image": photo, "keypoints_image": True})
    assert answer.status_code == 422
    assert "antelopev2" in answer.text and "scrfd_10g_bnkps.onnx and glintr100.onnx" in answer.text


def test_onnxruntime_is_installed_for_instantid_models(tmp_path, monkeypatch):
    """install.py: InstantID files (ours, or ControlNet's named ``instant_id``) need onnxruntime too."""
    from ipadapter_ext import face_setup

    models = tmp_path / "models"
    (models / "ControlNet").mkdir(parents=True)
    (models / "ipadapter").mkdir()
    monkeypatch.setattr(face_setup, "onnxruntime_present", lambda: False)
    widths = (8,) * 16
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("resampler", 16, widths, 1280, tokens=4, res_dim=32, inner=64), seed=1),
        models / "ipadapter" / "ip-adapter-plus.safetensors",
    )
    assert face_setup.install_reason(models, {}) is None  # a CLIP Resampler: no face analysis
    save_adapter_tensors(
        adapter_tensors(instantid_shapes(16, widths, res_dim=32, inner=64), seed=2),
        models / "ipadapter" / "ip-adapter.safetensors",
    )
    assert face_setup.install_reason(models, {}) == "InstantID model ip-adapter.safetensors"
    (models / "ipadapter" / "ip-adapter.safetensors").unlink()
    (models / "ControlNet" / "control_instant_id_sdxl.safetensors").write_bytes(b"not read")
    assert face_setup.install_reason(models, {}) == "InstantID model control_instant_id_sdxl.safetensors"
