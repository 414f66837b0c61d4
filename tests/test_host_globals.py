"""The hosts replace globals under the extension; what it calls must not depend on them.

A1111's ``modules/safe.py`` replaces ``torch.load`` with a checker whose allow-list (2023) refuses
the ``.format_version`` / ``.storage_alignment`` zip entries current torch writes: it prints a
"may be malicious" traceback and returns ``None``. Our loader is weights-only by itself, so it
reads files through torch's own loader and must give the same tensors with the global replaced.
"""

from __future__ import annotations

import zipfile

import pytest
import torch

from ipadapter_ext.core.load.formats import load_adapter_tensors, read_flat_tensors, read_shapes, save_adapter_tensors
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths


def refusing_host_load(*_args, **_kwargs):
    """What A1111's replacement does with a current torch's zip: a message and ``None``."""
    print("Error verifying pickled file ... The file may be malicious, so the program is not going to read it.")
    return None


@pytest.fixture
def adapter_bin(tmp_path):
    tensors = adapter_tensors(adapter_shapes("base", 32, tiny_widths(SD15_WIDTHS), 40), seed=5)
    path = tmp_path / "ip-adapter_test.bin"
    save_adapter_tensors(tensors, path)
    return tensors, path


def test_current_torch_bin_has_the_entries_the_host_refuses(adapter_bin):
    _, path = adapter_bin
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith(".format_version") for n in names)  # what A1111's allow-list lacks


def test_a_bin_loads_with_the_global_torch_load_replaced(adapter_bin, monkeypatch, capsys):
    tensors, path = adapter_bin
    monkeypatch.setattr(torch, "load", refusing_host_load)
    loaded = load_adapter_tensors(path)
    shapes = read_shapes(path)
    assert "malicious" not in capsys.readouterr().out
    assert loaded.image_proj.keys() == tensors.image_proj.keys()
    for name, value in tensors.image_proj.items():
        assert torch.equal(loaded.image_proj[name], value)  # the same bytes read back
    for name, value in tensors.ip_adapter.items():
        assert torch.equal(loaded.ip_adapter[name], value)
    assert shapes == loaded.shapes()


def test_a_code_pickle_is_still_refused_with_the_global_replaced(tmp_path, monkeypatch):
    from ipadapter_ext.core.errors import ModelFileError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"x": Evil()}}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the host's torch.load was called"))
    with pytest.raises(ModelFileError, match="Python objects"):
        read_flat_tensors(path)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_shapes_without_reading_the_data_equal_the_full_read(tmp_path, zip_format):
    """Listing maps a zip file's tensor data instead of reading it; the old (pre-1.6) format has
    no zip to map and is read whole. Both give the shapes of a full read."""
    flat = {"vision_model.embeddings.patch_embedding.weight": torch.randn(16, 3, 4, 4), "a.b": torch.randn(7)}
    path = tmp_path / "encoder.pth"
    torch.save(flat, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) is zip_format
    assert read_shapes(path) == {k: tuple(v.shape) for k, v in read_flat_tensors(path).items()}
    mapped = read_flat_tensors(path, mmap=True)
    for name, value in flat.items():
        assert torch.equal(mapped[name], value)
