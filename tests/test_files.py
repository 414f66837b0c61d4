"""Corrupt, truncated, unsafe and unrelated files give errors that name the file and the content."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.errors import ModelFileError
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.formats import load_adapter_tensors, read_shapes, save_adapter_tensors
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths

SHAPES = adapter_shapes("base", 32, tiny_widths(SD15_WIDTHS), 40)


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "ip-adapter_sd15.safetensors"
    save_adapter_tensors(adapter_tensors(SHAPES), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="ip-adapter_sd15.safetensors: cannot read .*download it again"):
        IPAdapterModel.from_file(path)


def test_garbage_bytes(tmp_path):
    for name in ("junk.safetensors", "junk.bin"):
        path = tmp_path / name
        path.write_bytes(b"\x00not a model at all" * 10)
        with pytest.raises(ModelFileError, match=f"{name}: cannot read"):
            load_adapter_tensors(path)
        with pytest.raises(ModelFileError, match=name):
            read_shapes(path)


def test_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"x": Exploit()}, "ip_adapter": {}}, str(path))
    with pytest.raises(ModelFileError, match="evil.bin: refused to load.*weights-only"):
        load_adapter_tensors(path)
    assert "this must never run" not in capsys.readouterr().out
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelFileError, match="raw.bin"):
        load_adapter_tensors(raw)
    assert "this must never run" not in capsys.readouterr().out


def test_unrelated_files_say_what_they_are(tmp_path):
    ckpt = tmp_path / "v1-5-pruned.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(ckpt))
    with pytest.raises(
        ModelFileError, match="v1-5-pruned.safetensors: not an IP-Adapter model.*Stable Diffusion checkpoint"
    ):
        IPAdapterModel.from_file(ckpt)
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.zeros(1)}, str(lora))
    with pytest.raises(ModelFileError, match="a LoRA"):
        IPAdapterModel.from_file(lora)
    with pytest.raises(ModelFileError, match="not a CLIP vision encoder.*Stable Diffusion checkpoint"):
        ClipVisionEncoder.from_file(ckpt)
    with pytest.raises(ModelFileError, match="no such file"):
        IPAdapterModel.from_file(tmp_path / "missing.safetensors")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelFileError, match="unsupported file type"):
        IPAdapterModel.from_file(other)


def test_bin_that_is_not_a_dict(tmp_path):
    path = tmp_path / "list.bin"
    torch.save([torch.zeros(2)], str(path))
    with pytest.raises(ModelFileError, match="holds a list, not a dictionary"):
        load_adapter_tensors(path)


def test_damaged_projection_tensor(tmp_path):
    tensors = adapter_tensors(SHAPES)
    tensors.image_proj["norm.bias"] = torch.zeros(7)
    path = tmp_path / "bad.safetensors"
    save_adapter_tensors(tensors, path)
    with pytest.raises(ModelFileError, match="bad.safetensors: the image projection does not load"):
        IPAdapterModel.from_file(path)


def test_header_only_shapes_match_tensors(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = adapter_tensors(SHAPES)
    save_adapter_tensors(tensors, path)
    assert read_shapes(path) == tensors.shapes()
