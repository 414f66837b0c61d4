"""Loaded adapters and encoders: bounded, keyed by file identity, loaded once per miss.

Loading is the expensive step of a generation (an SDXL Plus adapter is about 1 GB, a CLIP ViT-H
encoder 2.5 GB, bigG 3.7 GB), so every loaded model stays until its cache is full. Adapters and
encoders have caches of their own: three units with three adapters must not push the encoder
out, and an encoder must not push out an adapter. Each cache is bounded by a number of entries
and, optionally, by bytes; the least recently used entry goes first, but the entry just loaded
always stays (a single model larger than the byte bound still works, once).

The caches are shared by the generation and the HTTP routes, which run on other threads. Two
threads that miss the same key together load the file once: the first loads, the others wait for
its result (single flight). A load that fails is not cached; each waiter gets the same error.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def held_tensors(obj: Any, _seen: set[int] | None = None) -> Iterable[torch.Tensor]:
    """Every tensor reachable from ``obj`` through modules, containers and plain attributes,
    each storage once: what keeping ``obj`` alive holds in memory."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen or obj is None or isinstance(obj, str | bytes | int | float | bool | Path):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from held_tensors(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from held_tensors(value, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for value in vars(obj).values():
            yield from held_tensors(value, seen)


def held_bytes(obj: Any) -> dict[str, int]:
    """Bytes of the distinct tensor storages ``obj`` holds, per device type (``cpu``, ``cuda`` …);
    tensors on the ``meta`` device hold nothing."""
    out: dict[str, int] = {}
    storages: set[tuple[str, int]] = set()
    for t in held_tensors(obj):
        if t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key in storages:
            continue
        storages.add(key)
        out[t.device.type] = out.get(t.device.type, 0) + storage.nbytes()
    return out


def file_key(kind: str, path: Path) -> tuple:
    """A changed file (size or modification time) is a different model."""
    stat = path.stat()
    return (kind, str(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class _Flight:
    """One load in progress, which other threads missing the same key wait for."""

    done: threading.Event
    value: Any = None
    error: BaseException | None = None


class ModelCache:
    """``get(key, load)`` with least-recently-used eviction past ``max_items`` entries or
    ``max_bytes`` (0: no byte bound) and one load per key at a time."""

    def __init__(
        self,
        name: str,
        max_items: int,
        max_bytes: int = 0,
        size_of: Callable[[Any], dict[str, int]] = held_bytes,
    ) -> None:
        self.name = name
        self.max_items = max(0, int(max_items))
        self.max_bytes = max(0, int(max_bytes))
        self.size_of = size_of
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._sizes: dict[tuple, int] = {}
        self._flights: dict[tuple, _Flight] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.loads = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def get(self, key: tuple, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight(threading.Event())
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            with self._lock:
                self.hits += 1
            return flight.value
        try:
            # Building modules draws their random initial weights from torch's global generator,
            # which the WebUI seeds per generation and keeps drawing from (ancestral samplers'
            # noise, the VAE's latent sample in img2img). Loading must not move it, or the first
            # generation after a load would differ from the same seed later.
            with torch.random.fork_rng(devices=[]):
                value = load()
        except BaseException as exc:
            flight.error = exc
            with self._lock:
                del self._flights[key]
            flight.done.set()
            raise
        size = sum(self.size_of(value).values())
        with self._lock:
            self.loads += 1
            if self.max_items:
                self._items[key] = value
                self._sizes[key] = size
                self._evict(keep=key)
            flight.value = value
            del self._flights[key]
        flight.done.set()
        return value

    def _evict(self, keep: tuple | None = None) -> None:
        """Drop the oldest entries until both bounds hold (``keep`` stays in any case)."""
        while len(self._items) > self.max_items or (self.max_bytes and sum(self._sizes.values()) > self.max_bytes):
            victim = next((k for k in self._items if k != keep), None)
            if victim is None:
                return
            del self._items[victim]
            self._sizes.pop(victim, None)
            self.evictions += 1

    def resize(self, max_items: int | None = None, max_bytes: int | None = None) -> None:
        with self._lock:
            if max_items is not None:
                self.max_items = max(0, int(max_items))
            if max_bytes is not None:
                self.max_bytes = max(0, int(max_bytes))
            self._evict()

    def clear(self) -> int:
        """Forget every entry (a model in use elsewhere lives on until that use ends); returns
        how many there were."""
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self._sizes.clear()
            return count

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._items.values())

    def report(self) -> dict[str, Any]:
        """What is held now, for ``GET /ipadapter/v1/cache``."""
        with self._lock:
            items = list(self._items.items())
            report = {
                "entries": len(items),
                "max_entries": self.max_items,
                "max_bytes": self.max_bytes or None,
                "hits": self.hits,
                "loads": self.loads,
                "evictions": self.evictions,
                "loading": len(self._flights),
            }
        by_device: dict[str, int] = {}
        for _key, value in items:
            for device, size in self.size_of(value).items():
                by_device[device] = by_device.get(device, 0) + size
        report["bytes"] = sum(by_device.values())
        report["bytes_by_device"] = by_device
        report["files"] = [Path(key[1]).name for key, _ in items if len(key) > 1]
        return report
