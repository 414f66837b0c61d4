"""Forge's built-in insightface preprocessors served by our face analysis when insightface is missing.

Forge (dfdcbab6; reForge main and Forge Classic keep the same structures) registers
preprocessors in ``modules_forge.shared.supported_preprocessors``: the legacy
``instant_id_face_keypoints`` (an ``InsightFaceModel`` holder, fed RGB where sd-webui-controlnet
feeds BGR) and ``sd_forge_ipadapter``'s ``InsightFace (InstantID)`` and ``InsightFace+CLIP-H
(IPAdapter)`` (``cached_insightface``, with ``det_model.input_size`` stepped down by the IP-Adapter
code and ``face_align.norm_crop`` crops from a module global). The doubles are
tests/doubles/forge_builtin; the oracle is the same code with the insightface package.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.face_hosts import ForgeDouble, insightface_missing, webui_start
from tests.face_onnx import face_image

pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
pytest.importorskip("cv2", reason="Forge's doubles resize and draw with OpenCV, as Forge does")

SERVED = ["instant_id_face_keypoints", "InsightFace+CLIP-H (IPAdapter)", "InsightFace (InstantID)"]
# (width, height, faces, resolution); the last has a face found only once the IP-Adapter code
# lowers the detector size (576), which the keypoint preprocessor (one size) does not find.
CASES = [
    (800, 600, [(120, 80, 50), (400, 260, 150)], 768),
    (320, 240, [(120, 70, 60)], 512),
    (700, 700, [(150, 150, 380)], None),
]


def outputs(forge: ForgeDouble, image: np.ndarray, res: int | None) -> dict:
    from lib_ipadapter.IPAdapterPlus import face_inputs

    out = {}
    if res is not None:
        out["keypoints"] = forge.get("instant_id_face_keypoints")(image, resolution=res)
    cond = forge.get("InsightFace (InstantID)")(image, resolution=512)
    out["instantid"], _ = face_inputs(cond["insightface"], cond["image"], instant_id=True)
    cond = forge.get("InsightFace+CLIP-H (IPAdapter)")(image, resolution=512)
    out["faceid"], out["faceid_crops"] = face_inputs(cond["insightface"], cond["image"], instant_id=False)
    return out


@pytest.mark.parametrize("width,height,faces,res", CASES, ids=["two-faces", "small", "needs-576"])
def test_served_forge_preprocessors_equal_insightface(service, forge: ForgeDouble, width, height, faces, res):
    image = face_image(width, height, faces, seed=3)
    ref = outputs(forge.load(), image, res)
    assert forge.ipadapter.insightface_face_align.__name__ == "insightface.utils.face_align"
    with insightface_missing():
        forge.load()
        webui_start()
        ours = outputs(forge, image, res)
        assert type(forge.get("InsightFace (InstantID)").cached_insightface).__name__ == "InsightFaceApp"
        assert type(forge.ipadapter.insightface_face_align).__name__ == "FaceAlign"
    assert ours.keys() == ref.keys()
    for key, want in ref.items():
        got = ours[key]
        if isinstance(want, np.ndarray):
            assert got.shape == want.shape and got.dtype == want.dtype == np.uint8, key
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            assert got.shape == want.shape, key
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=key)
    assert ours["faceid_crops"].shape == (1, 224, 224, 3)
    assert forge.legacy.download_attempts == forge.ipadapter.download_attempts == []


def test_forge_console_line_and_untouched_with_insightface(service, forge: ForgeDouble, capsys):
    forge.load()
    webui_start()
    assert forge.get("InsightFace (InstantID)").cached_insightface is None
    assert forge.legacy.g_insight_face_instant_id_model.model is None
    assert capsys.readouterr().out == ""
    with insightface_missing():
        webui_start()
    line = capsys.readouterr().out
    assert line.count("insightface is not installed") == 1
    for name in SERVED:
        assert name in line
    assert "CLIP-ViT-H (IPAdapter)" not in line and "invert" not in line


def test_forge_ui_reload_keeps_them_served(service, forge: ForgeDouble):
    """A UI reload executes Forge's scripts again: fresh preprocessor objects replace the served
    ones in the registry; the start-up callbacks after the reload serve those."""
    with insightface_missing():
        forge.load()
        webui_start()
        served = forge.get("InsightFace (InstantID)")
        forge.run_scripts()
        fresh = forge.get("InsightFace (InstantID)")
        assert fresh is not served and fresh.cached_insightface is None
        webui_start()
        assert type(fresh.cached_insightface).__name__ == "InsightFaceApp"
        assert type(forge.get("InsightFace+CLIP-H (IPAdapter)").cached_insightface).__name__ == "InsightFaceApp"


def test_forge_without_its_controlnet_is_left_alone(service, forge: ForgeDouble, monkeypatch):
    from modules import extensions

    monkeypatch.setattr(extensions, "installed", [])
    with insightface_missing():
        forge.load()
        webui_start()
    assert forge.get("InsightFace (InstantID)").cached_insightface is None
    assert forge.ipadapter.insightface_face_align is None
