"""Model folders: listing by tensor shapes, ControlNet-folder filtering, caching, names, safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ipadapter_ext.core.load.registry as registry
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.core.load.detect import ProjectionKind
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.core.load.registry import ModelRegistry, UnknownModelError
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths
from tests.test_encoder import _vision_shapes

WIDTHS = tiny_widths(SD15_WIDTHS)
BASE_40 = adapter_shapes("base", 32, WIDTHS, 40)  # needs 40-wide image embeds
PLUS_128 = adapter_shapes("resampler", 32, WIDTHS, 128, tokens=16)  # needs 128-wide hidden states
BASE_H = adapter_shapes("base", 32, WIDTHS, 1024)  # needs CLIP ViT-H/14
FACEID = adapter_shapes("faceid", 32, WIDTHS, 0, lora_rank=2)


def write_adapter(path: Path, shapes=BASE_40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_adapter_tensors(adapter_tensors(shapes, seed), path)
    return path


def write_encoder(path: Path, hidden: int = 128, proj: int | None = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = _vision_shapes(hidden, 2, 32, 64, 96, proj)
    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def write_bytes(path: Path, data: bytes = b"\x00not a model at all" * 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def calls(monkeypatch) -> list[Path]:
    """Every file the registry reads, in order."""
    seen: list[Path] = []
    real = registry.read_shapes

    def spy(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(registry, "read_shapes", spy)
    return seen


def names(entries) -> list[str]:
    return [e.name for e in entries]


def test_lists_adapters_and_encoders_with_descriptions(tmp_path):
    write_adapter(tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors")
    write_adapter(tmp_path / "ipadapter" / "sub" / "ip-adapter-plus_sd15.bin", PLUS_128)
    write_encoder(tmp_path / "clip_vision" / "clip_tiny.safetensors")
    reg = ModelRegistry([tmp_path / "missing", tmp_path / "ipadapter"], [tmp_path / "clip_vision"], [tmp_path / "no"])
    reg.refresh()
    adapters = reg.adapters()
    assert names(adapters) == ["ip-adapter-plus_sd15", "ip-adapter_sd15"]
    plus, base = adapters
    assert plus.info is not None and plus.info.kind is ProjectionKind.RESAMPLER and plus.error is None
    assert plus.description == plus.info.describe() and "IP-Adapter Plus" in plus.description
    assert "16 tokens" in plus.description
    assert base.info is not None and base.info.variant == "base" and base.path.is_file()
    assert reg.adapter("ip-adapter_sd15") is base
    [enc] = reg.encoders()
    assert enc.name == "clip_tiny" and enc.spec is not None and enc.spec.hidden_size == 128
    assert enc.spec.projection_dim == 40 and enc.description == enc.spec.describe() and enc.error is None
    assert reg.encoder("clip_tiny") is enc


def test_controlnet_folder_keeps_only_adapters_and_loads_no_foreign_pickle(tmp_path, calls):
    cn = tmp_path / "ControlNet"
    write_adapter(cn / "ip-adapter_sd15.safetensors")
    write_adapter(cn / "ip-adapter_sd15_plus.pth", PLUS_128)
    write_adapter(cn / "renamed_ipadapter.bin", PLUS_128, seed=1)
    canny = write_bytes(cn / "control_v11p_sd15_canny.pth")  # would fail loudly if it were read
    write_adapter(cn / "not_named_like_one.pth")  # a real adapter, but a pickle without the name
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(4, 3)}, str(cn / "control_lineart.safetensors"))
    write_bytes(cn / "ip_adapter_broken.bin")
    write_encoder(cn / "clip_in_wrong_place.safetensors")
    reg = ModelRegistry([], [], [cn])
    reg.refresh()
    assert names(reg.adapters()) == ["ip-adapter_sd15", "ip-adapter_sd15_plus", "renamed_ipadapter"]
    assert all(e.error is None and e.info is not None for e in reg.adapters())
    read = {p.name for p in calls}
    assert canny.name not in read and "not_named_like_one.pth" not in read
    assert "control_lineart.safetensors" in read  # headers are cheap, so safetensors are all checked
    with pytest.raises(UnknownModelError):
        reg.adapter("control_v11p_sd15_canny")


def test_failing_files_in_model_folders_are_listed_with_the_reason(tmp_path):
    write_bytes(tmp_path / "ipadapter" / "junk.safetensors")
    write_encoder(tmp_path / "ipadapter" / "clip_vision_h.safetensors")  # an encoder in the adapter folder
    write_bytes(tmp_path / "clip" / "half.safetensors", b"\x10\x00")
    write_adapter(tmp_path / "clip" / "ip-adapter.safetensors")  # an adapter in the encoder folder
    reg = ModelRegistry([tmp_path / "ipadapter"], [tmp_path / "clip"])
    reg.refresh()
    clip, junk = reg.adapters()
    assert junk.info is None and junk.error is not None and "junk.safetensors" in junk.error
    assert junk.description == junk.error
    assert clip.info is None and "looks like a CLIP vision encoder" in clip.error
    half, ipa = reg.encoders()
    assert half.spec is None and "half.safetensors" in half.error and half.description == half.error
    assert ipa.spec is None and "not a CLIP vision encoder" in ipa.error
    with pytest.raises(IPAdapterError, match="'junk' cannot be used: junk.safetensors"):
        reg.auto_encoder("junk")


def test_duplicate_stems_get_folder_names(tmp_path):
    write_adapter(tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors")
    write_adapter(tmp_path / "ControlNet" / "ip-adapter_sd15.safetensors", seed=1)
    write_adapter(tmp_path / "a" / "x" / "m.safetensors")
    write_adapter(tmp_path / "b" / "x" / "m.safetensors", seed=1)
    write_adapter(tmp_path / "a" / "twin.safetensors")
    write_adapter(tmp_path / "a" / "twin.bin", seed=1)
    dirs = ([tmp_path / "ipadapter", tmp_path / "a", tmp_path / "b"], [], [tmp_path / "ControlNet"])
    reg = ModelRegistry(*dirs)
    reg.refresh()
    expected = {
        "ip-adapter_sd15 [ControlNet]": tmp_path / "ControlNet" / "ip-adapter_sd15.safetensors",
        "ip-adapter_sd15 [ipadapter]": tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors",
        "m [a > x]": tmp_path / "a" / "x" / "m.safetensors",
        "m [b > x]": tmp_path / "b" / "x" / "m.safetensors",
        "twin [a, .bin]": tmp_path / "a" / "twin.bin",
        "twin [a, .safetensors]": tmp_path / "a" / "twin.safetensors",
    }
    assert names(reg.adapters()) == sorted(expected, key=str.casefold)
    for name, path in expected.items():
        assert reg.adapter(name).path == path.resolve()
    again = ModelRegistry(*dirs)
    again.refresh()
    assert names(again.adapters()) == names(reg.adapters())


def test_refresh_reads_only_changed_files(tmp_path, calls):
    adapter = write_adapter(tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors")
    write_bytes(tmp_path / "ipadapter" / "junk.bin")
    write_encoder(tmp_path / "clip" / "enc.safetensors")
    (tmp_path / "ControlNet").mkdir()
    save_file({"control_model.x": torch.zeros(2)}, str(tmp_path / "ControlNet" / "canny.safetensors"))
    reg = ModelRegistry([tmp_path / "ipadapter"], [tmp_path / "clip"], [tmp_path / "ControlNet"])
    reg.refresh()
    assert len(calls) == 4
    reg.refresh()
    reg.refresh()
    assert len(calls) == 4, "unchanged files must come from the cache"
    assert reg.adapter("ip-adapter_sd15").info.kind is ProjectionKind.IMAGE

    write_adapter(adapter, PLUS_128)  # new content, new size
    reg.refresh()
    assert [p.name for p in calls[4:]] == ["ip-adapter_sd15.safetensors"]
    assert reg.adapter("ip-adapter_sd15").info.kind is ProjectionKind.RESAMPLER

    stat = adapter.stat()
    os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same size, newer
    reg.refresh()
    assert [p.name for p in calls[5:]] == ["ip-adapter_sd15.safetensors"]

    stat = adapter.stat()
    write_adapter(adapter, BASE_40)  # other size, same mtime (a copy that preserves times)
    os.utime(adapter, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert adapter.stat().st_size != stat.st_size
    reg.refresh()
    assert [p.name for p in calls[6:]] == ["ip-adapter_sd15.safetensors"]
    assert reg.adapter("ip-adapter_sd15").info.kind is ProjectionKind.IMAGE


def test_cache_is_bounded(tmp_path, calls):
    for i in range(3):
        write_adapter(tmp_path / f"a{i}.safetensors", seed=i)
    reg = ModelRegistry([tmp_path], [], cache_size=2)
    reg.refresh()
    reg.refresh()
    assert len(reg._cache) == 2
    assert len(calls) == 6  # with room for two of three files, an in-order scan always misses


@pytest.mark.parametrize("kind", ["adapter", "encoder"])
def test_unknown_and_path_like_names_are_refused(tmp_path, kind):
    write_adapter(tmp_path / "ipadapter" / "b.safetensors")
    write_adapter(tmp_path / "ipadapter" / "a.safetensors", seed=1)
    write_encoder(tmp_path / "clip" / "b.safetensors")
    write_encoder(tmp_path / "clip" / "a.safetensors", hidden=64)
    write_adapter(tmp_path / "outside.safetensors")
    reg = ModelRegistry([tmp_path / "ipadapter"], [tmp_path / "clip"])
    folder = "ipadapter" if kind == "adapter" else "clip"
    what = "IP-Adapter model" if kind == "adapter" else "CLIP vision encoder"
    lookup = reg.adapter if kind == "adapter" else reg.encoder
    assert lookup("a").name == "a"
    for name in (
        "x",
        "../outside",
        "../outside.safetensors",
        str(tmp_path / "outside.safetensors"),
        str(tmp_path / folder / "a.safetensors"),
        f"{folder}/a",
        "a.safetensors",
        "",
    ):
        with pytest.raises(UnknownModelError) as exc:
            lookup(name)
        assert str(exc.value) == f"unknown {what} '{name}'; available: a, b"
        assert isinstance(exc.value, KeyError) and isinstance(exc.value, IPAdapterError)


def test_empty_folders_say_where_to_put_files(tmp_path):
    reg = ModelRegistry([tmp_path / "ipadapter"], [tmp_path / "clip"])
    with pytest.raises(UnknownModelError, match="none available .put model files in .*ipadapter"):
        reg.adapter("ip-adapter_sd15")
    assert reg.adapters() == [] and reg.encoders() == []


def test_symlinks_leaving_the_folder_are_skipped(tmp_path):
    outside = tmp_path / "outside"
    write_adapter(outside / "secret.safetensors")
    write_encoder(outside / "clip" / "enc.safetensors")
    folder = tmp_path / "ipadapter"
    real = write_adapter(folder / "ip-adapter_sd15.safetensors")
    (folder / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "alias.safetensors").symlink_to(real)  # same file: listed once, under its own name
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    write_adapter(folder / "inner" / "plus.safetensors", PLUS_128)
    (folder / "inner_link").symlink_to(folder / "inner", target_is_directory=True)
    (tmp_path / "clip").symlink_to(outside / "clip", target_is_directory=True)  # a folder may itself be a link
    (outside / "clip" / "up").symlink_to(outside, target_is_directory=True)
    reg = ModelRegistry([folder], [tmp_path / "clip"])
    reg.refresh()
    assert names(reg.adapters()) == ["ip-adapter_sd15", "plus"]
    assert reg.adapter("ip-adapter_sd15").path == real.resolve()
    assert names(reg.encoders()) == ["enc"]  # and nothing reached through outside/up
    for name in ("escape", "secret", "alias"):
        with pytest.raises(UnknownModelError):
            reg.adapter(name)


def test_auto_encoder_picks_the_first_fitting_encoder(tmp_path):
    write_adapter(tmp_path / "ipadapter" / "ip-adapter_sd15.safetensors")
    write_adapter(tmp_path / "ipadapter" / "ip-adapter-plus_sd15.safetensors", PLUS_128)
    write_adapter(tmp_path / "ipadapter" / "ip-adapter_sd15_vit-h.safetensors", BASE_H)
    write_adapter(tmp_path / "ipadapter" / "ip-adapter-faceid_sd15.bin", FACEID)
    clip = tmp_path / "clip"
    write_encoder(clip / "a_small.safetensors", hidden=64, proj=24)
    write_bytes(clip / "b_broken.safetensors")
    write_encoder(clip / "c_fits.safetensors")
    write_encoder(clip / "d_fits_too.safetensors")
    write_encoder(clip / "0_no_projection.safetensors", proj=None)  # fits plus (hidden states) only
    reg = ModelRegistry([tmp_path / "ipadapter"], [clip])
    assert reg.auto_encoder("ip-adapter_sd15").name == "c_fits"
    assert reg.auto_encoder("ip-adapter-plus_sd15").name == "0_no_projection"
    with pytest.raises(IPAdapterError) as exc:
        reg.auto_encoder("ip-adapter_sd15_vit-h")
    assert str(exc.value) == (
        f"'ip-adapter_sd15_vit-h' needs CLIP ViT-H/14; no fitting encoder in {clip}. "
        "Put e.g. clip_vision_h.safetensors there."
    )
    with pytest.raises(IPAdapterError, match="FaceID.*takes a face embedding from the face analysis") as exc:
        reg.auto_encoder("ip-adapter-faceid_sd15")
    assert not isinstance(exc.value, UnknownModelError)
    with pytest.raises(UnknownModelError, match="available: ip-adapter-faceid_sd15, ip-adapter-plus_sd15"):
        reg.auto_encoder("nope")
