"""What the face code needs to know about an ONNX file, read without onnx or onnxruntime.

Telling a detector from a recogniser (and choosing the recogniser's input normalisation) needs
the graph's inputs, outputs and first node names, as insightface's model router does. Opening an
inference session for that would load every file of a pack (hundreds of MB, landmark models the
FaceID path never runs); the ``onnx`` package is not a runtime dependency. An ONNX file is a
protobuf ``ModelProto``, so this module walks its wire format and seeks past everything else
(weights included), reading a few kilobytes.

Fields used (onnx.proto): ModelProto.graph = 7; GraphProto.node = 1, input = 11, output = 12;
NodeProto.name = 3, op_type = 4; ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1;
TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FaceModelError

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class OnnxInfo:
    """Graph I/O and the first node names of one ONNX file."""

    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    first_nodes: tuple[str, ...] = field(default=())


_FIRST_NODES = 8


def _varint(buf: io.BufferedReader) -> int:
    shift = result = 0
    while True:
        byte = buf.read(1)
        if not byte:
            raise EOFError
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 70:
            raise ValueError("malformed varint")


def _fields(buf, end: int):
    """Yield (field number, wire type, value or length) up to ``end``; length-delimited values are
    left unread (the caller reads or skips ``length`` bytes)."""
    while buf.tell() < end:
        tag = _varint(buf)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            yield number, wire, _varint(buf)
        elif wire == 1:
            buf.seek(8, io.SEEK_CUR)
        elif wire == 5:
            buf.seek(4, io.SEEK_CUR)
        elif wire == 2:
            yield number, wire, _varint(buf)
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _message(data: bytes):
    """(field number, wire type, value) over a small message held in memory; LEN values are bytes."""
    buf = io.BytesIO(data)
    for number, wire, value in _fields(buf, len(data)):
        if wire == 2:
            yield number, wire, buf.read(value)
        else:
            yield number, wire, value


def _value_info(data: bytes) -> TensorInfo:
    name, dims = "", []
    for number, _, value in _message(data):
        if number == 1:
            name = value.decode("utf-8", "replace")
        elif number == 2:
            for n_type, _, tensor in _message(value):
                if n_type != 1:
                    continue
                for n_tensor, _, shape in _message(tensor):
                    if n_tensor != 2:
                        continue
                    for n_shape, _, dim in _message(shape):
                        if n_shape != 1:
                            continue
                        size: Dim = None
                        for n_dim, _, v in _message(dim):
                            if n_dim == 1:
                                size = int(v)
                            elif n_dim == 2:
                                size = v.decode("utf-8", "replace")
                        dims.append(size)
    return TensorInfo(name, tuple(dims))


def _node_name(data: bytes) -> str:
    for number, _, value in _message(data):
        if number == 3:
            return value.decode("utf-8", "replace")
    return ""


def read_onnx_info(path: Path) -> OnnxInfo:
    """Inputs, outputs and first node names of ``path``; ``FaceModelError`` if it is not ONNX."""
    path = Path(path)
    try:
        with path.open("rb") as buf:
            size = path.stat().st_size
            graph = None
            for number, wire, value in _fields(buf, size):
                if wire == 2 and number == 7:
                    graph = (buf.tell(), buf.tell() + value)
                    break
                if wire == 2:
                    buf.seek(value, io.SEEK_CUR)
            if graph is None:
                raise ValueError("no graph")
            buf.seek(graph[0])
            inputs, outputs, nodes = [], [], []
            for number, wire, value in _fields(buf, graph[1]):
                if wire != 2:
                    continue
                if number == 11:
                    inputs.append(_value_info(buf.read(value)))
                elif number == 12:
                    outputs.append(_value_info(buf.read(value)))
                elif number == 1 and len(nodes) < _FIRST_NODES:
                    nodes.append(_node_name(buf.read(value)))
                else:
                    buf.seek(value, io.SEEK_CUR)
            if buf.tell() != graph[1]:
                raise ValueError("truncated graph")
    except (OSError, EOFError, ValueError, UnicodeError) as exc:
        raise FaceModelError(
            f"{path} is not a readable ONNX model ({exc}). Download the file again; a partial "
            "download or an HTML error page saved under the model's name looks like this."
        ) from exc
    return OnnxInfo(path, tuple(inputs), tuple(outputs), tuple(nodes))
