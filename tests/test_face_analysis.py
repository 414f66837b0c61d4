"""Face analysis (ipadapter_ext.core.face) against insightface 0.7.3, on tiny models of buffalo_l's shape.

The oracle is the insightface package itself (requirements/test.txt, test-only), run on the
same tiny ONNX files (tests/face_onnx.py) and the same pixels (insightface takes BGR, so it gets
the RGB image reversed). Detection, landmarks, the chosen face, aligned crops and embeddings are
compared bit for bit: both sides do the same float32 arithmetic in the same order, and the crops
use OpenCV's fixed-point warp, which ``imaging.warp_affine`` reproduces.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.face import (
    NO_FACE_MESSAGE,
    DetectAttempt,
    FaceAnalyser,
    FaceInputError,
    FaceModelError,
    FaceModelMissingError,
    FaceRuntimeMissingError,
    NoFaceError,
    SessionCache,
    align,
    align_array,
    alignment_matrix,
    find_pack,
    retry_schedule,
)
from ipadapter_ext.core.face.imaging import resize_linear, warp_affine
from ipadapter_ext.core.face.onnx_info import read_onnx_info
from ipadapter_ext.core.face.pack import load_pack, model_kind
from ipadapter_ext.core.face.runtime import default_providers
from tests.face_onnx import arcface_model, face_image, landmark_model, scrfd_model, write_pack

TWO_FACES = [(96, 64, 40), (320, 224, 112)]  # (x, y, side) at 640×480: a small and a larger face


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def pack_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("face_models")
    write_pack(root / "insightface" / "models" / "buffalo_l")
    return root


@pytest.fixture(scope="module")
def sessions():
    return SessionCache(providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def analyser(pack_root, sessions):
    return FaceAnalyser(find_pack([pack_root]), sessions=sessions)


@pytest.fixture(scope="module")
def insightface_app(pack_root):
    pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
    from insightface.app import FaceAnalysis

    with contextlib.redirect_stdout(io.StringIO()):  # it prints every model it finds
        app = FaceAnalysis(
            name="buffalo_l",
            root=str(pack_root / "insightface"),
            allowed_modules=["detection", "recognition"],
            providers=["CPUExecutionProvider"],
        )
        app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


# --- equality with insightface ------------------------------------------------------------------


@pytest.mark.parametrize("width,height,scale", [(640, 480, 1.0), (800, 600, 1.25), (1000, 700, 1.5625)])
def test_faces_equal_insightface_face_analysis(insightface_app, pack_root, sessions, width, height, scale):
    rgb = face_image(width, height, [(int(x * scale), int(y * scale), int(s * scale)) for x, y, s in TWO_FACES], seed=3)
    single = FaceAnalyser(find_pack([pack_root]), sessions=sessions, retry=False)
    ref = insightface_app.get(rgb[:, :, ::-1].copy())
    got = single.detect(rgb)
    assert len(ref) == len(got) == 2
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(g.box, r.bbox)
        assert g.score == float(r.det_score)
        np.testing.assert_array_equal(g.kps, r.kps)
        np.testing.assert_array_equal(g.embedding, r.embedding)
        np.testing.assert_array_equal(g.normed_embedding, r.normed_embedding)
        assert g.box.dtype == g.kps.dtype == g.embedding.dtype == np.float32
        assert g.attempt == DetectAttempt(640)
    # The face FaceID uses: the largest box (CN PR #2745), here not the best-scoring one.
    chosen = single.largest(rgb)
    ref_largest = max(ref, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
    np.testing.assert_array_equal(chosen.box, ref_largest.bbox)
    np.testing.assert_array_equal(chosen.embedding, ref_largest.embedding)
    assert chosen.box[2] - chosen.box[0] > 100  # the 112-pixel face, scaled with the image


def test_aligned_crops_equal_norm_crop():
    pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
    from insightface.utils import face_align

    rng = np.random.default_rng(7)
    for trial in range(12):
        h, w = rng.integers(90, 500, 2)
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # A randomly rotated, scaled and shifted template with landmark noise, partly off-image.
        angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.4, 3.0)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        kps = (face_align.arcface_dst @ rot.T * scale + rng.uniform(-60, 300, 2) + rng.normal(0, 2, (5, 2))).astype(
            np.float32
        )
        for size in (112, 224, 256):
            ref = face_align.norm_crop(rgb[:, :, ::-1], kps, size)[:, :, ::-1]
            np.testing.assert_array_equal(align_array(rgb, kps, size), ref, err_msg=f"trial {trial} size {size}")
            np.testing.assert_array_equal(alignment_matrix(kps, size), face_align.estimate_norm(kps, size))
    crop = align(Image.fromarray(rgb), kps, 224)
    assert crop.mode == "RGB" and crop.size == (224, 224)
    with pytest.raises(FaceInputError, match="multiples of 112 or 128"):
        align_array(rgb, kps, 200)


def test_batched_detector_outputs_equal_insightface_scrfd(tmp_path, pack_root, sessions):
    pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
    from insightface.model_zoo.scrfd import SCRFD  # FaceAnalysis routes to RetinaFace, which has no batch axis

    folder = write_pack(tmp_path / "batched", batched=True)
    rgb = face_image(800, 600, [(120, 80, 50), (400, 280, 140)], seed=5)
    det = SCRFD(model_file=str(folder / "det_10g.onnx"))
    det.prepare(-1, input_size=(640, 640))
    ref_boxes, ref_kps = det.detect(rgb[:, :, ::-1].copy())
    batched = FaceAnalyser(load_pack(folder), sessions=sessions, retry=False)
    assert batched.detector.batched
    got = batched.find(rgb)
    assert len(got) == len(ref_boxes) == 2
    for g, box, kps in zip(got, ref_boxes, ref_kps, strict=True):
        np.testing.assert_array_equal(g.box, box[:4])
        assert g.score == float(box[4])
        np.testing.assert_array_equal(g.kps, kps)
    plain = FaceAnalyser(find_pack([pack_root]), sessions=sessions, retry=False).find(rgb)
    np.testing.assert_array_equal(np.stack([f.box for f in plain]), np.stack([f.box for f in got]))


@pytest.mark.parametrize("mxnet_style,expected", [(False, (127.5, 127.5)), (True, (0.0, 1.0))])
def test_recogniser_normalisation_follows_first_graph_nodes(tmp_path, mxnet_style, expected):
    folder = write_pack(tmp_path / "pack", with_landmark=False)
    onnx.save(arcface_model(mxnet_style=mxnet_style), str(folder / "w600k_r50.onnx"))
    assert load_pack(folder).recognizer_normalisation == expected
    insightface = pytest.importorskip("insightface", reason="the oracle (requirements/test.txt) is not installed")
    ref = insightface.model_zoo.arcface_onnx.ArcFaceONNX(model_file=str(folder / "w600k_r50.onnx"))
    assert (ref.input_mean, ref.input_std) == expected


def test_bilinear_resize_and_warp_match_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV comes with the oracle (requirements/test.txt)")
    rng = np.random.default_rng(11)
    exact = total = 0
    for _ in range(20):
        h, w = rng.integers(40, 600, 2)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        size = (int(rng.integers(16, 700)), int(rng.integers(16, 700)))
        diff = np.abs(resize_linear(img, size).astype(int) - cv2.resize(img, size))
        assert diff.max() <= 1
        exact += int((diff == 0).sum())
        total += diff.size
        m = np.array([[rng.uniform(0.3, 3), rng.uniform(-1, 1), rng.uniform(-200, 80)], [0, 0, 0]])
        m[1, :2] = [-m[0, 1], m[0, 0]]
        m[1, 2] = rng.uniform(-200, 80)
        np.testing.assert_array_equal(warp_affine(img, m, (224, 224)), cv2.warpAffine(img, m, (224, 224)))
    assert exact / total > 0.995  # OpenCV's other SIMD paths round a few values differently
    np.testing.assert_array_equal(resize_linear(img[:200, :300], (150, 100)), cv2.resize(img[:200, :300], (150, 100)))


# --- retries for faces that fill the frame ----------------------------------------------------------


def test_retry_schedule_steps_down_then_pads():
    sizes = [a.det_size for a in retry_schedule(640)]
    assert sizes == [640, 576, 512, 448, 384, 320, 640]
    assert [a.pad_fraction for a in retry_schedule(640)][-1] == 0.5
    assert retry_schedule(640, pad_fraction=0) == tuple(DetectAttempt(s) for s in sizes[:-1])


def test_large_face_is_found_at_a_smaller_detector_size(analyser, pack_root, sessions):
    rgb = face_image(640, 640, [(120, 120, 400)], seed=1)
    single = FaceAnalyser(find_pack([pack_root]), sessions=sessions, retry=False)
    assert single.find(rgb) == []  # insightface's single attempt at 640 misses it
    face = analyser.largest(rgb)
    assert face.attempt == DetectAttempt(512)
    assert iou(face.box, [120, 120, 520, 520]) > 0.75
    assert face.embedding is not None and face.embedding.shape == (512,)


def test_face_filling_the_frame_is_found_with_a_border(analyser, pack_root, sessions):
    rgb = face_image(640, 640, [(0, 0, 640)], seed=2)  # no background at all
    for det_size in (640, 576, 512, 448, 384, 320):
        single = FaceAnalyser(find_pack([pack_root]), det_size=det_size, sessions=sessions, retry=False)
        assert single.find(rgb) == [], det_size
    face = analyser.largest(rgb)
    assert face.attempt == DetectAttempt(640, 0.5)
    # Box and landmarks are in the original image's coordinates, not the padded canvas's.
    assert iou(face.box, [0, 0, 640, 640]) > 0.75, face.box
    assert face.kps[:, 0].min() > 0 and face.kps[:, 0].max() < 640
    # The embedding is the one of the face as found (aligning from the black-bordered canvas
    # gives the same crop, the warp's border being black too).
    np.testing.assert_array_equal(
        face.embedding, analyser.recognizer.embed(align_array(rgb, face.kps, analyser.recognizer.input_size))
    )


def test_no_face_raises_an_actionable_error(analyser):
    with pytest.raises(NoFaceError) as info:
        analyser.largest(face_image(500, 400, [], seed=4))
    assert isinstance(info.value, IPAdapterError)
    assert str(info.value) == NO_FACE_MESSAGE
    assert "No face was found" in NO_FACE_MESSAGE and "not cut off" in NO_FACE_MESSAGE
    assert analyser.detect(face_image(500, 400, [], seed=4)) == []


def test_image_inputs_are_rgb(analyser):
    rgb = face_image(640, 480, TWO_FACES, seed=3)
    ref = analyser.largest(rgb)
    for image in (
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("RGBA"),
        np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)]),
    ):
        np.testing.assert_array_equal(analyser.largest(image).embedding, ref.embedding)
    # Channel order matters (BGR input would give a different embedding on real models).
    assert not np.array_equal(analyser.largest(rgb[:, :, ::-1].copy()).embedding, ref.embedding)
    with pytest.raises(FaceInputError, match="uint8"):
        analyser.largest(rgb.astype(np.float32))


# --- model pack discovery, sessions, onnxruntime --------------------------------------------------------


def test_onnx_info_equals_the_onnx_package(tmp_path):
    for name, model in (("det", scrfd_model()), ("bdet", scrfd_model(batched=True)), ("rec", arcface_model())):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, str(path))
        ref = onnx.load(str(path))
        info = read_onnx_info(path)

        def dims(value_info):
            return tuple(
                d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim
            )

        assert [(t.name, t.shape) for t in info.inputs] == [(v.name, dims(v)) for v in ref.graph.input]
        assert [(t.name, t.shape) for t in info.outputs] == [(v.name, dims(v)) for v in ref.graph.output]
        assert info.first_nodes == tuple(n.name for n in ref.graph.node[:8])


def test_pack_models_are_told_apart_by_graph_io(tmp_path):
    folder = tmp_path / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    # Names that sort the other way round and say nothing; a landmark model sorts first.
    onnx.save(arcface_model(), str(folder / "a.onnx"))
    onnx.save(landmark_model(), str(folder / "0.onnx"))
    onnx.save(scrfd_model(), str(folder / "b.onnx"))
    (folder / "notes.onnx").write_bytes(b"<html>404</html>")
    pack = find_pack([tmp_path / "nowhere", tmp_path])  # an insightface home: <root>/models/<pack>
    assert pack.detector.path.name == "b.onnx" and pack.recognizer.path.name == "a.onnx"
    assert [model_kind(read_onnx_info(folder / n)) for n in ("0.onnx", "a.onnx", "b.onnx")] == [
        "landmark",
        "recognition",
        "detection",
    ]


def test_missing_pack_names_the_folder_and_files(tmp_path):
    with pytest.raises(FaceModelMissingError) as info:
        find_pack([tmp_path / "models"])
    message = str(info.value)
    assert str(tmp_path / "models" / "insightface" / "models" / "buffalo_l") in message
    assert "det_10g.onnx" in message and "w600k_r50.onnx" in message
    assert isinstance(info.value, IPAdapterError)
    folder = tmp_path / "models" / "insightface" / "models" / "buffalo_l"
    folder.mkdir(parents=True)
    onnx.save(scrfd_model(), str(folder / "det_10g.onnx"))
    (folder / "w600k_r50.onnx").write_bytes(b"\x00partial download")
    with pytest.raises(FaceModelMissingError, match=r"lacks the face recogniser \(w600k_r50.onnx\)") as info:
        find_pack([tmp_path / "models"])
    assert str(folder) in str(info.value) and "not readable ONNX models: w600k_r50.onnx" in str(info.value)


def test_detector_without_landmarks_is_refused(tmp_path, sessions):
    folder = write_pack(tmp_path, with_landmark=False)
    onnx.save(scrfd_model(landmarks=False), str(folder / "det_10g.onnx"))
    with pytest.raises(FaceModelError, match="no facial landmarks.*det_10g.onnx"):
        FaceAnalyser(load_pack(folder), sessions=sessions)


def test_session_cache_is_bounded_and_keyed_by_file_state(tmp_path):
    write_pack(tmp_path, with_landmark=True)
    cache = SessionCache(max_items=2, providers=["CPUExecutionProvider"])
    det = cache.get(tmp_path / "det_10g.onnx")
    assert cache.get(tmp_path / "det_10g.onnx") is det and cache.loads == 1
    cache.get(tmp_path / "w600k_r50.onnx")
    cache.get(tmp_path / "1k3d68.onnx")
    assert len(cache) == 2 and cache.loads == 3
    rec = cache.get(tmp_path / "w600k_r50.onnx")
    onnx.save(arcface_model(seed=1), str(tmp_path / "w600k_r50.onnx"))
    stat = (tmp_path / "w600k_r50.onnx").stat()
    os.utime(tmp_path / "w600k_r50.onnx", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.get(tmp_path / "w600k_r50.onnx") is not rec  # changed on disk: reloaded
    assert len(cache) == 2


def test_missing_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    write_pack(tmp_path, with_landmark=False)
    pack = load_pack(tmp_path)  # finding the pack needs no onnxruntime
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(FaceRuntimeMissingError, match="pip install onnxruntime") as info:
        FaceAnalyser(pack)
    assert isinstance(info.value, IPAdapterError)


def test_default_providers_put_cuda_first_when_available():
    class Ort:
        def __init__(self, providers):
            self.providers = providers

        def get_available_providers(self):
            return self.providers

    assert default_providers(Ort(["AzureExecutionProvider", "CPUExecutionProvider"])) == ["CPUExecutionProvider"]
    assert default_providers(Ort(["CUDAExecutionProvider", "CPUExecutionProvider"])) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
