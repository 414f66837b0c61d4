"""onnxruntime, imported on first use, and a bounded cache of its inference sessions.

onnxruntime is optional for the extension as a whole (only FaceID needs it), so nothing imports
it before a face is analysed, and its absence becomes an error that says what to install.
Sessions are expensive (the ArcFace model is 170 MB); ``SessionCache`` keeps the last few, keyed
by the file's path, modification time and size, so a replaced file is reloaded and a
stale session is never reused. The engine owns one cache; there is no module-level registry.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import FaceModelError, FaceRuntimeMissingError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or ``FaceRuntimeMissingError`` with the install command."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise FaceRuntimeMissingError(
            "FaceID models need onnxruntime to find and embed faces, and it is not installed "
            f"({exc}). Install it into the WebUI's Python environment: in the extension's folder run "
            "python -m ipadapter_ext.face_setup with the WebUI's Python (it runs pip install onnxruntime "
            "keeping the WebUI's protobuf and numpy; or install onnxruntime-gpu for CUDA), then restart the WebUI."
        ) from exc


def default_providers(ort: Any) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always (as the fallback)."""
    available = set(ort.get_available_providers())
    return [CUDA, CPU] if CUDA in available else [CPU]


class SessionCache:
    """Least-recently-used ``onnxruntime.InferenceSession``s, at most ``max_items``."""

    def __init__(self, max_items: int = 4, providers: Sequence[str] | None = None) -> None:
        self.max_items = max(1, int(max_items))
        self.providers = list(providers) if providers is not None else None
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self.loads = 0

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def get(self, path: Path) -> Any:
        """The session for ``path``, created on first use (or when the file changed)."""
        path = Path(path).resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise FaceModelError(f"Cannot read the face model {path}: {exc}") from exc
        ort = import_onnxruntime()
        providers = self.providers if self.providers is not None else default_providers(ort)
        key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(providers))
        session = self._items.get(key)
        if session is not None:
            self._items.move_to_end(key)
            return session
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime's warnings about providers are noise here
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FaceModelError(
                f"onnxruntime cannot load the face model {path}: {exc}. Download the file again."
            ) from exc
        self.loads += 1
        for old in [k for k in self._items if k[0] == key[0]]:
            del self._items[old]  # the same file, changed on disk: drop the stale session
        self._items[key] = session
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return session
