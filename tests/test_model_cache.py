"""Loaded adapters and encoders (issue 19, item 3): caches of their own, bounded by count and
bytes, one load per miss even when threads miss together; cold loads announced with progress."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.core.load.loaded import ModelCache, held_bytes
from ipadapter_ext.host import a1111
from tests.a1111_env import CTX, attn2_widths, image, job, run_job, unit_args
from tests.factories import adapter_shapes, adapter_tensors
from tests.test_encoder import _save, _tiny_model


def count_loads(monkeypatch) -> Counter:
    """File name → how many times it was read into a model, from now on."""
    loads: Counter = Counter()
    for cls in (IPAdapterModel, ClipVisionEncoder):
        original = cls.from_file.__func__

        def from_file(klass, path, *args, _original=original, **kw):
            loads[str(path).rsplit("/", 1)[-1]] += 1
            return _original(klass, path, *args, **kw)

        monkeypatch.setattr(cls, "from_file", classmethod(from_file))
    return loads


@pytest.fixture
def two_encoders(webui, tmp_path):
    """A second adapter family: ``tiny-base24`` needs ``tiny-clip-small`` (24-wide image embeds),
    beside ``tiny-plus`` and ``tiny-base``, which both take ``tiny-clip``."""
    small = _tiny_model(seed=5, hidden_size=64, intermediate_size=48, projection_dim=24)
    _save(small, tmp_path / "models" / "clip_vision" / "tiny-clip-small.safetensors")
    shapes = adapter_shapes("base", CTX, attn2_widths(webui.unet), 24)
    save_adapter_tensors(adapter_tensors(shapes, seed=9), tmp_path / "models" / "ipadapter" / "tiny-base24.safetensors")
    a1111.engine().registry.refresh()
    return webui


@torch.no_grad()
def test_three_units_three_adapters_two_encoders_load_each_file_once_over_five_generations(two_encoders, monkeypatch):
    loads = count_loads(monkeypatch)
    units = (
        {"image": image(1), "model": "tiny-plus"},
        {"image": image(2), "model": "tiny-base"},
        {"image": image(3), "model": "tiny-base24"},
    )
    outputs = [run_job(two_encoders.script, unit_args(*units), job(two_encoders.model)) for _ in range(5)]
    assert loads == {
        "tiny-plus.safetensors": 1,
        "tiny-base.bin": 1,
        "tiny-base24.safetensors": 1,
        "tiny-clip.safetensors": 1,
        "tiny-clip-small.safetensors": 1,
    }
    assert all(torch.equal(out, outputs[0]) for out in outputs[1:])
    report = a1111.engine().cache_report()
    assert (report["adapters"]["entries"], report["encoders"]["entries"]) == (3, 2)
    assert report["adapters"]["hits"] >= 4 * 3 and report["encoders"]["loads"] == 2


@torch.no_grad()
def test_the_bounds_come_from_the_settings_and_a_smaller_one_evicts(two_encoders, monkeypatch):
    from modules import shared

    from ipadapter_ext.host.models import cache_size_changed

    loads = count_loads(monkeypatch)
    units = ({"image": image(1), "model": "tiny-plus"}, {"image": image(3), "model": "tiny-base24"})
    run_job(two_encoders.script, unit_args(*units), job(two_encoders.model))
    shared.opts.ipadapter_encoders_kept = 1
    cache_size_changed()
    engine = a1111.engine()
    assert len(engine.encoders) == 1 and len(engine.adapters) == 2
    run_job(two_encoders.script, unit_args(*units), job(two_encoders.model))
    # one encoder kept, two needed: each generation now loads both again (the setting says so)
    assert loads["tiny-clip.safetensors"] == loads["tiny-clip-small.safetensors"] == 2
    assert loads["tiny-plus.safetensors"] == loads["tiny-base24.safetensors"] == 1  # adapters untouched


def test_count_and_byte_bounds_evict_least_recently_used_but_keep_the_newest():
    cache = ModelCache("t", max_items=3, max_bytes=10 * 4)  # 10 float32
    made = Counter()

    def load(n: int):
        def build():
            made[n] += 1
            return torch.zeros(n)

        return build

    cache.get(("a",), load(4))
    cache.get(("b",), load(4))
    cache.get(("a",), load(4))  # a is now the most recent
    cache.get(("c",), load(4))  # 12 floats > 10: b goes (least recently used), a stays
    assert ("a",) in cache and ("b",) not in cache and ("c",) in cache
    big = cache.get(("d",), load(20))  # larger than the byte bound alone: kept, the others go
    assert len(cache) == 1 and cache.get(("d",), load(20)) is big and made[20] == 1
    cache.resize(max_bytes=0)
    for key in "efg":
        cache.get((key,), load(1))
    assert len(cache) == 3 and ("d",) not in cache  # the count bound: d was least recently used
    report = cache.report()
    assert report["entries"] == 3 and report["bytes"] == 3 * 4 and report["max_entries"] == 3
    assert cache.clear() == 3 and len(cache) == 0
    assert ModelCache("none", max_items=0).get(("x",), load(2)) is not None  # 0 keeps nothing


def test_threads_missing_together_load_once_and_share_the_result():
    cache = ModelCache("t", max_items=2)
    calls = Counter()
    gate = threading.Barrier(6)

    def slow():
        calls["n"] += 1
        time.sleep(0.2)  # long enough for every thread to miss while it runs
        return object()

    got: list = []

    def worker():
        gate.wait()
        got.append(cache.get(("model",), slow))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls["n"] == 1 and len(got) == 6 and all(g is got[0] for g in got)
    assert cache.loads == 1 and cache.hits == 5


def test_a_failed_load_is_not_cached_and_every_waiter_gets_its_error():
    cache = ModelCache("t", max_items=2)
    gate = threading.Barrier(3)
    errors: list = []

    def broken():
        time.sleep(0.1)
        raise ValueError("truncated file")

    def worker():
        gate.wait()
        try:
            cache.get(("bad",), broken)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3 and len(cache) == 0
    assert cache.get(("bad",), lambda: "healed") == "healed"  # the next miss tries again


def test_held_bytes_counts_each_storage_once_per_device():
    weight = torch.zeros(100)
    holder = type("Holder", (), {})()
    holder.parts = [weight, weight[:10], {"again": weight}]
    holder.module = torch.nn.Linear(4, 2, bias=False)
    holder.meta = torch.empty(1000, device="meta")
    assert held_bytes(holder) == {"cpu": 100 * 4 + 8 * 4}


def test_a_cold_load_is_announced_once_and_reads_with_progress(two_encoders, monkeypatch, capsys):
    from ipadapter_ext.core.load import progress

    bars: list = []
    original = progress.reading

    def reading(total, label=None):
        bars.append((total, label or progress.current()))
        return original(total, label)

    monkeypatch.setattr(progress, "reading", reading)
    units = ({"image": image(1), "model": "tiny-plus"},)
    run_job(two_encoders.script, unit_args(*units), job(two_encoders.model))
    run_job(two_encoders.script, unit_args(*units), job(two_encoders.model))
    out = capsys.readouterr().out
    assert out.count("IP-Adapter: loading the image encoder tiny-clip.safetensors (") == 1
    assert out.count("IP-Adapter: loading the IP-Adapter model tiny-plus.safetensors (") == 1
    labels = [label for _, label in bars]
    assert labels == ["IP-Adapter: tiny-plus.safetensors", "IP-Adapter: tiny-clip.safetensors"]
    assert all(total > 0 for total, _ in bars)


def test_progress_shows_only_after_two_seconds(capsys, monkeypatch):
    """tqdm's ``delay``: a fast read prints nothing, a slow one draws its bar on stderr."""
    from ipadapter_ext.core.load import progress

    with progress.reading(1000, "IP-Adapter: fast.safetensors") as update:
        update(1000)
    assert "fast.safetensors" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.05)
    with progress.reading(1000, "IP-Adapter: slow.safetensors") as update:
        time.sleep(0.1)
        update(1000)
    assert "IP-Adapter: slow.safetensors" in capsys.readouterr().err


def test_reading_with_progress_gives_the_same_tensors(tmp_path):
    """The per-tensor reads behind the progress bar (safetensors; zip pickles through a map) give
    exactly what the plain reads give."""
    from ipadapter_ext.core.load import progress
    from ipadapter_ext.core.load.formats import read_flat_tensors

    tensors = adapter_tensors(adapter_shapes("base", CTX, (32, 64), 40), seed=3)
    for name in ("a.safetensors", "a.bin"):
        save_adapter_tensors(tensors, tmp_path / name)
        plain = read_flat_tensors(tmp_path / name)
        with progress.labelled("IP-Adapter: test"):
            shown = read_flat_tensors(tmp_path / name)
        assert plain.keys() == shown.keys() and all(torch.equal(plain[k], shown[k]) for k in plain)
