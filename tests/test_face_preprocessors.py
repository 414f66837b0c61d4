"""sd-webui-controlnet's insightface preprocessors served by our face analysis when insightface is
missing (ipadapter_ext/interop/face_preprocessors.py, host/face_preprocessors.py).

The double (tests/doubles/sd-webui-controlnet, mirroring 56cec5b2) is imported as the WebUI
imports ControlNet; our script is loaded by the ``webui`` fixture and its start-up callbacks are
run as the WebUI runs them. The oracle is the same double with the insightface package (the
test-only dependency) on the same tiny packs: every output must be equal, the keypoint images
pixel for pixel.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest
import torch

from tests.face_hosts import ControlNetDouble, insightface_missing, webui_start
from tests.face_onnx import face_image

pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
pytest.importorskip("cv2", reason="ControlNet's double resizes and draws with OpenCV, as ControlNet does")

SERVED = [
    "instant_id_face_embedding",
    "instant_id_face_keypoints",
    "ip-adapter_face_id",
    "ip-adapter_face_id_plus",
    "ip-adapter_pulid",
]
# (width, height, faces (x, y, side), resolution): shrinking (area) and enlarging (bicubic)
# resizes, landscape and portrait, one face and several of different sizes.
CASES = [
    (800, 600, [(120, 80, 50), (400, 260, 150)], 512),
    (800, 600, [(120, 80, 50), (400, 260, 150)], 768),
    (640, 480, [(96, 64, 40), (320, 224, 112)], 768),
    (320, 240, [(120, 70, 60)], 512),
    (500, 700, [(100, 200, 130), (300, 450, 60)], 512),
]


def assert_same_outputs(ours: dict, ref: dict) -> None:
    for name in SERVED:
        got, want = ours[name], ref[name]
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want, err_msg=name)  # pixel for pixel
        else:
            assert got.shape == want.shape and got.dtype == want.dtype, name
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("width,height,faces,res", CASES, ids=[f"{c[0]}x{c[1]}-res{c[3]}" for c in CASES])
def test_served_preprocessors_equal_insightface(service, controlnet: ControlNetDouble, width, height, faces, res):
    image = face_image(width, height, faces, seed=3)
    ref = controlnet.load().outputs(image, res)  # insightface, as ControlNet runs it
    assert all(type(h.model).__module__.startswith("insightface") for h in controlnet.holders())
    with insightface_missing():
        controlnet.load()
        webui_start()
        ours = controlnet.outputs(image, res)
        assert all(type(h.model).__name__ == "InsightFaceApp" for h in controlnet.holders())
    assert_same_outputs(ours, ref)
    keypoints = ours["instant_id_face_keypoints"]
    assert keypoints.shape[:2] == (round(height * res / min(width, height)), round(width * res / min(width, height)))
    assert len(np.unique(keypoints.reshape(-1, 3), axis=0)) > 5  # limbs and dots were drawn
    assert ours["instant_id_face_embedding"].shape == (512,)  # raw, as InstantID takes it
    assert torch.linalg.vector_norm(ours["ip-adapter_face_id"]).item() == pytest.approx(1.0, abs=1e-5)
    assert controlnet.processor.download_attempts == []


def test_without_serving_the_preprocessors_fail_for_want_of_insightface(controlnet: ControlNetDouble):
    """What users get today, and what serving fixes."""
    with insightface_missing():
        controlnet.load()
        with pytest.raises(ModuleNotFoundError, match="insightface"):
            controlnet.get("instant_id_face_keypoints")(face_image(320, 240, [(120, 70, 60)]), resolution=512)


def test_served_when_insightface_is_missing_and_console_says_so_once(service, controlnet, capsys):
    with insightface_missing():
        controlnet.load()
        webui_start()
        webui_start()  # a second pass (another callback, a reload) does not repeat the line
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "insightface is not installed" in line]
    assert len(lines) == 1, out
    for name in SERVED:
        assert name in lines[0]
    assert "invert" not in lines[0]
    fid, instant = controlnet.holders()
    assert type(fid.model).__name__ == type(instant.model).__name__ == "InsightFaceApp"
    assert (fid.model.name, instant.model.name) == ("buffalo_l", "antelopev2")
    assert instant.antelopev2_installed  # ControlNet's downloader is not run: the pack is ours to find


def test_untouched_when_insightface_imports(service, controlnet, capsys):
    controlnet.load()
    webui_start()
    assert all(h.model is None for h in controlnet.holders())
    assert not controlnet.holders()[1].antelopev2_installed
    assert "insightface" not in capsys.readouterr().out


def test_a_broken_insightface_counts_as_missing(service, controlnet, tmp_path, monkeypatch):
    """An install that fails at import (a compiled part or numpy mismatch) is served like none."""
    broken = tmp_path / "site" / "insightface"
    (broken / "app").mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility')\n"
    )
    for name in [n for n in sys.modules if n.split(".")[0] == "insightface"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert importlib.util.find_spec("insightface") is not None
    controlnet.load()
    webui_start()
    assert all(type(h.model).__name__ == "InsightFaceApp" for h in controlnet.holders())


@pytest.mark.parametrize("controlnet_first", [True, False], ids=["controlnet-loaded-first", "ours-loaded-first"])
def test_either_extension_load_order(service, controlnet, controlnet_first):
    """Ours before or after ControlNet: serving waits until every script is loaded."""
    with insightface_missing():
        if controlnet_first:
            controlnet.load()
            _reload_our_script()
        else:
            _reload_our_script()
            controlnet.load()
        webui_start()
        assert all(type(h.model).__name__ == "InsightFaceApp" for h in controlnet.holders())


def _reload_our_script() -> None:
    """What a WebUI (re)load does with our script: callbacks cleared, the file executed again."""
    from modules import script_callbacks

    from tests.a1111_env import REPO

    script_callbacks.callbacks.clear()
    spec = importlib.util.spec_from_file_location("ipadapter", REPO / "scripts" / "ipadapter.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_controlnet_reload_keeps_them_served(service, controlnet, capsys):
    """ControlNet's preprocessors re-created (its modules imported afresh: new registry, new
    holders) and the WebUI's UI reload: served again, without a second console line."""
    image = face_image(320, 240, [(120, 70, 60)], seed=3)
    with insightface_missing():
        controlnet.load()
        webui_start()
        first = controlnet.outputs(image)
        old = controlnet.holders()
        controlnet.load()  # fresh objects, empty slots
        assert all(h.model is None for h in controlnet.holders()) and controlnet.holders()[0] is not old[0]
        _reload_our_script()
        webui_start()
        assert all(type(h.model).__name__ == "InsightFaceApp" for h in controlnet.holders())
        again = controlnet.outputs(image)
    assert_same_outputs(again, first)
    assert capsys.readouterr().out.count("insightface is not installed") == 1


def test_nothing_is_touched_without_controlnet(service, controlnet, monkeypatch, capsys):
    """ControlNet's modules loaded but the extension not enabled (or absent): no slot filled."""
    from modules import extensions

    monkeypatch.setattr(extensions, "installed", [])
    with insightface_missing():
        controlnet.load()
        webui_start()
    assert all(h.model is None for h in controlnet.holders())
    assert capsys.readouterr().out == ""


def test_an_insightface_object_already_loaded_is_kept(service, controlnet):
    """A slot someone filled with insightface (before it broke, or another extension) stays."""
    from ipadapter_ext.host.face_preprocessors import _SERVICE

    with insightface_missing():
        controlnet.load()
        theirs = object()
        controlnet.processor.g_insight_face_model.model = theirs
        reports = _SERVICE.refresh()
    ((_host, report),) = reports
    assert controlnet.processor.g_insight_face_model.model is theirs
    assert set(report.kept) == {"ip-adapter_face_id", "ip-adapter_face_id_plus"}
    assert {"instant_id_face_embedding", "instant_id_face_keypoints", "ip-adapter_pulid"} <= set(report.served)


def test_missing_antelopev2_pack_names_the_folder_and_files(service, controlnet, capsys):
    import shutil

    shutil.rmtree(controlnet.models / "insightface" / "models" / "antelopev2")
    with insightface_missing():
        controlnet.load()
        webui_start()
        out = capsys.readouterr().out
        folder = controlnet.models / "insightface" / "models" / "antelopev2"
        assert "scrfd_10g_bnkps.onnx" in out and "glintr100.onnx" in out and str(folder) in out
        with pytest.raises(Exception, match="scrfd_10g_bnkps.onnx and glintr100.onnx") as info:
            controlnet.get("instant_id_face_keypoints")(face_image(320, 240, [(120, 70, 60)]), resolution=512)
        assert str(folder) in str(info.value)
    assert controlnet.processor.download_attempts == []


def test_packs_in_controlnets_own_download_folder_are_found(service, controlnet, tmp_path):
    """ControlNet's preprocessor folder (its setting, or annotator/downloads) holds the packs."""
    import shutil

    image = face_image(320, 240, [(120, 70, 60)], seed=3)
    own = tmp_path / "cn-downloads"
    shutil.move(str(controlnet.models / "insightface"), str(own / "insightface"))
    controlnet.models = own  # ControlNet's setting points there (the double's models_path)
    with insightface_missing():
        controlnet.load()
        webui_start()
        out = controlnet.get("instant_id_face_embedding")(image, resolution=512)
    assert out.shape == (512,)


def test_an_unreadable_registry_entry_does_not_stop_serving(service, controlnet):
    """Other extensions register preprocessors in the same table; one that raises when read is
    skipped, the rest are served."""
    from ipadapter_ext.host.face_preprocessors import _SERVICE

    with insightface_missing():
        controlnet.load()

        class Odd(controlnet.registry):
            @property
            def call_function(self):
                raise RuntimeError("not loaded yet")

        controlnet.registry.add_supported_preprocessor(Odd("odd_face_thing"))
        ((_host, report),) = _SERVICE.refresh()
    assert "odd_face_thing" not in report.served + report.kept
    assert {"instant_id_face_embedding", "ip-adapter_face_id"} <= set(report.served)
