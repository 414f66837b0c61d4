"""The list of adapter and encoder files a user can choose from, and name → file resolution.

Other integrations guess model types from file names and resolve user-supplied names as paths,
which lets an API caller read files outside the model folders. Here every listed file was
inspected by its tensor shapes, a name only ever resolves through the scanned list, and symlinks
leaving a model folder are ignored. Detection results are cached by (resolved path, size, mtime),
so re-scanning unchanged folders reads no file; ControlNet's folder, full of multi-GB unrelated
models, costs one safetensors header each and no pickle is loaded unless its name says IP-Adapter.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..encode.encoder import ClipVisionSpec, EncoderSpec, SiglipVisionSpec, infer_encoder_spec
from ..errors import IPAdapterError
from .adapter_info import AdapterInfo
from .compat import compatible_encoders
from .detect import detect_adapter
from .formats import MODEL_SUFFIXES, PICKLE_SUFFIXES, read_shapes

#: Pickles in ControlNet's folder are loaded only when their file name contains one of these.
CONTROLNET_PICKLE_NEEDLES = ("ip-adapter", "ip_adapter", "ipadapter")
#: A file name to suggest when no encoder fits (the usual download names).
ENCODER_FILE_HINTS = {
    "ViT-H/14": "clip_vision_h.safetensors",
    "ViT-bigG/14": "clip_vision_g.safetensors",
    "ViT-L/14": "clip_vision_l.safetensors",
    "SigLIP so400m": "google/siglip-so400m-patch14-384's model.safetensors (e.g. as siglip-so400m-patch14-384.safetensors)",
}
_MAX_LISTED_NAMES = 40


class UnknownModelError(IPAdapterError, KeyError):
    """A model name that is not in the scanned list; a ``KeyError`` so lookups can catch it."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class AdapterEntry:
    """One adapter file: ``info`` when detection worked, else ``error`` says why not."""

    name: str
    path: Path
    info: AdapterInfo | None
    error: str | None

    @property
    def description(self) -> str:
        return self.info.describe() if self.info is not None else (self.error or "")


@dataclass(frozen=True)
class EncoderEntry:
    """One image encoder file (CLIP vision or SigLIP): ``spec`` when its shapes were understood,
    else ``error``."""

    name: str
    path: Path
    spec: EncoderSpec | None
    error: str | None

    @property
    def description(self) -> str:
        return self.spec.describe() if self.spec is not None else (self.error or "")


_Entry = TypeVar("_Entry", AdapterEntry, EncoderEntry)


@dataclass(frozen=True)
class _Found:
    root: Path  # the model folder as configured (its name is shown when stems collide)
    path: Path  # the file as found, possibly a symlink inside the folder
    resolved: Path
    controlnet: bool = False


def _walk(root: Path) -> Iterator[tuple[Path, Path]]:
    """(path, resolved path) of model files under ``root``, sorted, never leaving ``root``.

    Symlinked folders are followed only when they resolve inside ``root``, each real folder once,
    so a link to ``/`` or to an ancestor neither escapes nor loops.
    """
    if not root.is_dir():
        return
    top = root.resolve()
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = (Path(dirpath) / d).resolve()
            if real.is_relative_to(top) and real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            path = Path(dirpath) / f
            if path.suffix.lower() not in MODEL_SUFFIXES:
                continue
            real = path.resolve()
            if real.is_relative_to(top) and real.is_file():
                yield path, real


def _folders(f: _Found) -> tuple[str, ...]:
    """The folders above a file, outermost first, without the drive or ``/``."""
    parts = (*f.root.parts, *f.path.relative_to(f.root).parent.parts)
    return parts[1:] if f.root.anchor else parts


def _unique_names(found: Sequence[_Found]) -> list[str]:
    """File stems; colliding stems get ``[parent]``, then more of the path, until unique."""
    names = [f.path.stem for f in found]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    for stem, members in groups.items():
        if len(members) < 2:
            continue
        parts = {i: _folders(found[i]) for i in members}
        depth = max(1, *(len(p) for p in parts.values()))
        # More and more folders, then the same with the suffix (x.bin next to x.safetensors).
        rounds = [(k, suffix) for suffix in (False, True) for k in range(1, depth + 1)]
        for k, suffix in rounds:
            labels = {i: " > ".join(parts[i][-k:]) + (f", {found[i].path.suffix}" if suffix else "") for i in members}
            if len(set(labels.values())) == len(members):
                break
        for i in members:
            names[i] = f"{stem} [{labels[i]}]"
    taken: set[str] = set()
    for i, name in enumerate(names):  # a file literally called "x [y]" could still collide
        n, candidate = 2, name
        while candidate in taken:
            candidate, n = f"{name} ({n})", n + 1
        names[i] = candidate
        taken.add(candidate)
    return names


def _detect_adapter(real: Path) -> AdapterInfo:
    return detect_adapter(read_shapes(real), real.name)


def _detect_encoder(real: Path) -> EncoderSpec:
    return infer_encoder_spec(read_shapes(real), real.name)


def _sorted(entries: list) -> list:
    return sorted(entries, key=lambda e: (e.name.casefold(), e.name))


class ModelRegistry:
    """Scans adapter, encoder and ControlNet folders; resolves names only through the scan."""

    def __init__(
        self,
        adapter_dirs: Sequence[Path],
        encoder_dirs: Sequence[Path],
        controlnet_dirs: Sequence[Path] = (),
        cache_size: int = 1024,
    ) -> None:
        self.adapter_dirs = tuple(Path(d) for d in adapter_dirs)
        self.encoder_dirs = tuple(Path(d) for d in encoder_dirs)
        self.controlnet_dirs = tuple(Path(d) for d in controlnet_dirs)
        #: (kind, resolved path, size, mtime_ns) → detection result or error text; LRU-bounded.
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()
        self._adapters: dict[str, AdapterEntry] = {}
        self._encoders: dict[str, EncoderEntry] = {}
        self._scanned = False

    def _inspect(self, kind: str, real: Path, detect: Callable[[Path], object]) -> object:
        """Cached ``detect(real)``; an exception is cached as its message (files do not heal)."""
        stat = real.stat()
        key = (kind, str(real), stat.st_size, stat.st_mtime_ns)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            result: object = detect(real)
        except Exception as exc:  # any failure is shown next to the file, never raised
            result = str(exc) if isinstance(exc, IPAdapterError) else f"{real.name}: cannot inspect ({exc!r})."
        self._cache[key] = result
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def _scan(self, kind: str, detect: Callable[[Path], object], want: type | tuple[type, ...]) -> list[tuple]:
        """(display name, resolved path, result or None, error or None) per listed file."""
        dirs = self.adapter_dirs if kind == "adapter" else self.encoder_dirs
        found = [_Found(root, path, real) for root in dirs for path, real in _walk(root)]
        if kind == "adapter":
            found += [_Found(root, path, real, True) for root in self.controlnet_dirs for path, real in _walk(root)]
        found.sort(key=lambda f: f.path.absolute() != f.resolved)  # a file's own name beats a link's
        kept: list[tuple[_Found, object]] = []
        seen: set[Path] = set()
        for f in found:
            by_name = any(needle in f.path.name.lower() for needle in CONTROLNET_PICKLE_NEEDLES)
            if f.resolved in seen or (f.controlnet and f.path.suffix.lower() in PICKLE_SUFFIXES and not by_name):
                continue  # loading a multi-GB ControlNet pickle just to reject it is not an option
            try:
                result = self._inspect(kind, f.resolved, detect)
            except OSError:
                continue  # vanished or unreadable between listing and stat
            if f.controlnet and not isinstance(result, want):
                continue  # ControlNet's own models are none of our business
            seen.add(f.resolved)
            kept.append((f, result))
        names = _unique_names([f for f, _ in kept])
        return [
            (n, f.resolved, r, None) if isinstance(r, want) else (n, f.resolved, None, str(r))
            for n, (f, r) in zip(names, kept, strict=True)
        ]

    def refresh(self) -> None:
        """Re-scan every folder; unchanged files are answered from the cache."""
        with self._lock:
            adapters = [AdapterEntry(*row) for row in self._scan("adapter", _detect_adapter, AdapterInfo)]
            encoders = [
                EncoderEntry(*row) for row in self._scan("encoder", _detect_encoder, (ClipVisionSpec, SiglipVisionSpec))
            ]
            self._adapters = {e.name: e for e in _sorted(adapters)}
            self._encoders = {e.name: e for e in _sorted(encoders)}
            self._scanned = True

    def adapters(self) -> list[AdapterEntry]:
        if not self._scanned:
            self.refresh()
        return list(self._adapters.values())

    def encoders(self) -> list[EncoderEntry]:
        if not self._scanned:
            self.refresh()
        return list(self._encoders.values())

    def adapter(self, name: str) -> AdapterEntry:
        """The scanned entry called ``name``; ``name`` is never interpreted as a path."""
        dirs = (*self.adapter_dirs, *self.controlnet_dirs)
        return self._lookup({e.name: e for e in self.adapters()}, name, "IP-Adapter model", dirs)

    def encoder(self, name: str) -> EncoderEntry:
        """The scanned entry called ``name``; ``name`` is never interpreted as a path."""
        return self._lookup({e.name: e for e in self.encoders()}, name, "CLIP vision encoder", self.encoder_dirs)

    @staticmethod
    def _lookup(table: dict[str, _Entry], name: object, what: str, dirs: Sequence[Path]) -> _Entry:
        if isinstance(name, str) and name in table:
            return table[name]
        if not table:
            where = ", ".join(str(d) for d in dirs) or "no folder configured"
            raise UnknownModelError(f"unknown {what} '{name}'; none available (put model files in {where}).")
        available = list(table)
        more = f" … ({len(available) - _MAX_LISTED_NAMES} more)" if len(available) > _MAX_LISTED_NAMES else ""
        raise UnknownModelError(f"unknown {what} '{name}'; available: {', '.join(available[:_MAX_LISTED_NAMES])}{more}")

    def auto_encoder(self, adapter_name: str) -> EncoderEntry:
        """The first encoder (by name) whose shapes fit the adapter, for the 'auto' choice."""
        entry = self.adapter(adapter_name)
        if entry.info is None:
            raise IPAdapterError(f"IP-Adapter model '{entry.name}' cannot be used: {entry.error}")
        req = entry.info.encoder
        if not req.needs_clip:
            raise IPAdapterError(
                f"'{entry.name}' ({entry.info.name}) takes a face embedding from the face analysis, not a CLIP "
                "image encoder."
            )
        specs = [(e.name, e.spec) for e in self.encoders() if e.spec is not None]
        fits = compatible_encoders(entry.info, specs)
        if not fits:
            dirs = ", ".join(str(d) for d in self.encoder_dirs) or "the CLIP vision folder"
            default = (
                "a matching SigLIP .safetensors file"
                if req.family == "siglip"
                else "a matching CLIP vision .safetensors file"
            )
            hint = ENCODER_FILE_HINTS.get(req.clip_name or "", default)
            raise IPAdapterError(
                f"'{entry.name}' needs {req.describe()}; no fitting encoder in {dirs}. Put e.g. {hint} there."
            )
        return self._encoders[fits[0]]
