"""Tiny ONNX models with the graph I/O of insightface's buffalo_l pack, and synthetic face images.

The detector has det_10g.onnx's interface (input ``input.1`` [1, 3, H, W] with free H, W; nine
outputs: scores (N, 1), box distances (N, 4), landmark offsets (N, 10) for strides 8, 16, 32 with
two anchors per cell, or the same with a leading batch axis) and real spatial behaviour: at each
stride it scores how much brighter a window of ``centre`` cells is than the ring around it out to
``surround`` cells (``WINDOWS``; zero padding, i.e. mid-grey, beyond the canvas). A bright square
on a dark background about ``centre`` cells wide is therefore found at the stride that matches its
size, at its position, while a face much larger than 9 × 32 input pixels (one filling a 640
canvas) has no dark ring anywhere and is not found until it is made smaller (retry at a smaller
det size) or given a dark surround (retry with a border). Box and landmark outputs vary with the
local contrast, so decoded values are not grid-aligned constants.

The recogniser has w600k_r50.onnx's interface (input [N, 3, 112, 112] → [1, 512]): an average
pool and a fixed random projection, so every pixel of the aligned crop moves the embedding.

``write_antelope_pack`` writes the same behaviour with the I/O of insightface's ``antelopev2`` pack
(InstantID's), as insightface reports it when loading the real files: ``scrfd_10g_bnkps.onnx``
with input ``input.1`` [1, 3, ?, ?] and nine outputs declared at their 640 × 640 sizes without a
batch axis ([12800, 1] … [800, 10]: the exporter fixed them, so any other size runs with
onnxruntime's shape warnings, as the real model does), ``glintr100.onnx`` with input
[None, 3, 112, 112] → [1, 512] (a PyTorch export: raw pixels normalised outside, mean and std
127.5), and stand-ins for the landmark and gender/age models that must be skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
STRIDES = (8, 16, 32)
# (centre, surround) window widths in cells per stride: faces of about 40, 112 and 288 pixels
WINDOWS = {8: (5, 11), 16: (7, 13), 32: (9, 15)}
GAIN = 10.0
THRESHOLD = 1.25  # score = sigmoid(GAIN·(contrast − THRESHOLD)); contrast runs from −2 to 2


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _const(name: str, value) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


#: scrfd_10g_bnkps.onnx's output names: scores, then boxes, then landmarks, each for strides 8, 16, 32.
ANTELOPE_DETECTOR_OUTPUTS = ("448", "471", "494", "451", "474", "497", "454", "477", "500")


def scrfd_model(
    batched: bool = False, landmarks: bool = True, output_names=None, fixed_rows: bool = False
) -> onnx.ModelProto:
    """The tiny detector (see the module docstring); without ``landmarks`` it has six outputs.

    ``output_names`` renames the outputs (in order); ``fixed_rows`` declares each output's row
    count at a 640 × 640 input instead of a free ``N``.
    """
    nodes, inits = (
        [],
        [
            _const("grey_w", np.full((1, 3, 1, 1), 1 / 3)),
            numpy_helper.from_array(np.array([1, -1, 1] if batched else [-1, 1], dtype=np.int64), "shape1"),
            numpy_helper.from_array(np.array([1, -1, 4] if batched else [-1, 4], dtype=np.int64), "shape4"),
            numpy_helper.from_array(np.array([1, -1, 10] if batched else [-1, 10], dtype=np.int64), "shape10"),
            _const("gain", GAIN),
            _const("bias", GAIN * THRESHOLD),
            _const("anchor_shift", 0.5),
        ],
    )
    nodes.append(helper.make_node("Conv", ["input.1", "grey_w"], ["grey"], name="Conv_0"))
    outs = {"score": [], "bbox": [], "kps": []}
    for s in STRIDES:
        centre, surround = WINDOWS[s]
        area_c, area_s = centre**2, surround**2
        p = f"s{s}_"
        nodes.append(helper.make_node("AveragePool", ["grey"], [p + "cell"], kernel_shape=[s, s], strides=[s, s]))
        for tag, k in (("c", centre), ("w", surround)):
            pad = k // 2
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    [p + "cell"],
                    [p + tag],
                    kernel_shape=[k, k],
                    pads=[pad] * 4,
                    count_include_pad=1,
                )
            )
        inits += [
            _const(p + "ka", area_s / (area_s - area_c)),
            _const(p + "kb", area_c / (area_s - area_c)),
        ]
        # ring = (wide·S² − centre·C²) / (S² − C²); contrast = centre − ring
        nodes += [
            helper.make_node("Mul", [p + "w", p + "ka"], [p + "w_s"]),
            helper.make_node("Mul", [p + "c", p + "kb"], [p + "c_s"]),
            helper.make_node("Sub", [p + "w_s", p + "c_s"], [p + "ring"]),
            helper.make_node("Sub", [p + "c", p + "ring"], [p + "contrast"]),
            helper.make_node("Mul", [p + "contrast", "gain"], [p + "g"]),
            helper.make_node("Sub", [p + "g", "bias"], [p + "logit0"]),
            helper.make_node("Sub", [p + "logit0", "anchor_shift"], [p + "logit1"]),
            helper.make_node("Concat", [p + "logit0", p + "logit1"], [p + "logits"], axis=1),
            helper.make_node("Sigmoid", [p + "logits"], [p + "prob"]),
            helper.make_node("Transpose", [p + "prob"], [p + "prob_t"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [p + "prob_t", "shape1"], [f"score_{s}"]),
        ]
        r = centre / 2
        box_d = np.array([r, r, r, r] * 2, dtype=np.float32)
        box_k = np.array([0.3, -0.2, 0.1, 0.25, 0.2, -0.1, 0.3, 0.15], dtype=np.float32)
        kps_t = np.array([[-0.35, -0.3], [0.35, -0.3], [0.0, 0.05], [-0.3, 0.35], [0.3, 0.35]]) * centre
        kps_d = np.concatenate([kps_t.reshape(-1)] * 2).astype(np.float32)
        kps_k = np.linspace(-0.4, 0.4, 20).astype(np.float32)
        for kind, d, k, width in (("bbox", box_d, box_k, 4), ("kps", kps_d, kps_k, 10)):
            inits += [_const(p + kind + "_w", k.reshape(-1, 1, 1, 1)), _const(p + kind + "_b", d)]
            nodes += [
                helper.make_node("Conv", [p + "contrast", p + kind + "_w", p + kind + "_b"], [p + kind]),
                helper.make_node("Transpose", [p + kind], [p + kind + "_t"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [p + kind + "_t", f"shape{width}"], [f"{kind}_{s}"]),
            ]
        for kind in outs:
            outs[kind].append(f"{kind}_{s}")
    lead = [1] if batched else []
    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10))[: 3 if landmarks else 2]:
        for s, name in zip(STRIDES, outs[kind], strict=True):
            rows = (640 // s) ** 2 * 2 if fixed_rows else "N"
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [*lead, rows, width]))
    if output_names is not None:
        renames = dict(zip([o.name for o in outputs], output_names, strict=True))
        for node in nodes:
            node.output[:] = [renames.get(n, n) for n in node.output]
        for out in outputs:
            out.name = renames[out.name]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])]
    return _model(nodes, inputs, outputs, inits)


def arcface_model(mxnet_style: bool = False, seed: int = 0, output_name: str = "683") -> onnx.ModelProto:
    """The tiny recogniser; ``mxnet_style`` names its first nodes like MXNet exports that
    normalise inside the graph (insightface then feeds raw pixels)."""
    rng = np.random.default_rng(seed)
    inits = [
        _const("proj", rng.standard_normal((3 * 14 * 14, 512)) / 20.0),
        _const("zero", 0.0),
        _const("one", 1.0),
    ]
    first = [
        helper.make_node("Sub", ["input.1", "zero"], ["x0"], name="_minus0" if mxnet_style else "Sub_0"),
        helper.make_node("Mul", ["x0", "one"], ["x1"], name="_mul0" if mxnet_style else "Mul_1"),
    ]
    if not mxnet_style:  # w600k_r50 starts with convolutions
        first = [helper.make_node("Identity", ["input.1"], ["x1"], name="Conv_0")]
    nodes = [
        *first,
        helper.make_node("AveragePool", ["x1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "proj"], [output_name], name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, 512])]
    return _model(nodes, inputs, outputs, inits)


def landmark_model(side: int = 192) -> onnx.ModelProto:
    """A stand-in for 2d106det.onnx (192² input, 106 (x, y) points out) or, with ``side`` 96,
    genderage.onnx (3 numbers out): they sort before the detector and recogniser and must be
    skipped; insightface runs them on every face (without ``allowed_modules``), and can."""
    width = 212 if side == 192 else 3
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["mean"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["mean", "spread"], ["fc1"]),
    ]
    inits = [_const("spread", np.linspace(-0.5, 0.5, 3 * width).reshape(3, width))]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, side, side])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])]
    return _model(nodes, inputs, outputs, inits)


def write_pack(folder: Path, batched: bool = False, with_landmark: bool = True) -> Path:
    """A buffalo_l-shaped folder with the tiny models; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(scrfd_model(batched), str(folder / "det_10g.onnx"))
    onnx.save(arcface_model(), str(folder / "w600k_r50.onnx"))
    if with_landmark:
        onnx.save(landmark_model(), str(folder / "1k3d68.onnx"))
    return folder


def write_antelope_pack(folder: Path) -> Path:
    """An antelopev2-shaped folder (InstantID's pack) with the tiny models; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        scrfd_model(output_names=ANTELOPE_DETECTOR_OUTPUTS, fixed_rows=True), str(folder / "scrfd_10g_bnkps.onnx")
    )
    onnx.save(arcface_model(seed=1, output_name="1333"), str(folder / "glintr100.onnx"))
    onnx.save(landmark_model(), str(folder / "1k3d68.onnx"))
    onnx.save(landmark_model(), str(folder / "2d106det.onnx"))
    onnx.save(landmark_model(96), str(folder / "genderage.onnx"))
    return folder


def face_image(width: int, height: int, faces=(), seed: int = 0, background: int = 20) -> np.ndarray:
    """RGB uint8 image: dark textured background with bright textured squares (x, y, side)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 2 * background + 1, (height, width, 3)).astype(np.int32)
    for x, y, side in faces:
        patch = rng.integers(180, 256, (side, side, 3))
        ys, xs = slice(max(y, 0), min(y + side, height)), slice(max(x, 0), min(x + side, width))
        img[ys, xs] = patch[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
    return img.astype(np.uint8)
