"""ControlNet's face preprocessors without insightface: when to serve them, and the console line.

Serving runs after every extension's scripts are loaded (``on_before_ui``, which A1111 and Forge
call in the UI and the API-only server alike, and again after each UI reload, when ControlNet's
scripts may have re-created their preprocessors) and once more at ``on_app_started``, so the
load order of the extensions does not matter. Each pass is idempotent; the console says what is
served the first time, and again only if that changes.
"""

from __future__ import annotations

from typing import Any

from ..core.face.errors import FaceAnalysisError
from ..core.face.insightface_compat import FACE_ALIGN, InsightFaceApp
from ..interop.controlnet import controlnet_dirs
from ..interop.face_preprocessors import ServeReport, insightface_importable, registries, serve
from .callbacks import register
from .models import engine

PREFIX = "[IP-Adapter]"


def _is_ours(obj: Any) -> bool:
    return isinstance(obj, InsightFaceApp)


class FacePreprocessorService:
    """One per process: the insightface stand-ins (one per pack, sharing the engine's ONNX
    sessions) and what was last announced."""

    def __init__(self) -> None:
        self._apps: dict[str, InsightFaceApp] = {}
        self.announced: str | None = None

    def app(self, pack: str) -> InsightFaceApp:
        if pack not in self._apps:
            self._apps[pack] = InsightFaceApp(pack, self._analyser)
        return self._apps[pack]

    @staticmethod
    def _analyser(pack: str, **kwargs: Any):
        faces = engine().faces
        if faces is None:  # every host sets it; a guard for a host that offers no face analysis
            raise FaceAnalysisError("This WebUI offers no face analysis to serve the face preprocessors.")
        return faces.analyser(pack, retry=False, **kwargs)

    def refresh(self) -> list[tuple[str, ServeReport]]:
        """Serve every loaded ControlNet registry (nothing without ControlNet, nothing when
        insightface imports); prints the console line when what is served changed."""
        roots = controlnet_dirs()
        if not roots:
            return []
        tables = registries(roots)
        if not tables or insightface_importable():
            return []
        reports = [(host, serve(table, self.app, FACE_ALIGN, _is_ours)) for host, table in tables]
        line = console_line(reports)
        if line and line != self.announced:
            print(line)
            for note in pack_notes({p for _h, r in reports for p in r.packs}):
                print(note)
            self.announced = line
        return reports


def console_line(reports: list[tuple[str, ServeReport]]) -> str | None:
    parts = [f"{', '.join(r.served)} ({host})" for host, r in reports if r.served]
    if not parts:
        return None
    return (
        f"{PREFIX} insightface is not installed: serving ControlNet's face preprocessors {'; '.join(parts)} "
        "with this extension's face analysis (onnxruntime, same outputs)."
    )


def pack_notes(packs: set[str]) -> list[str]:
    """A line per pack the served preprocessors need that is missing, and one if onnxruntime is."""
    from ..core.face import find_pack
    from ..face_setup import onnxruntime_present

    notes = []
    faces = engine().faces
    for pack in sorted(packs):
        try:
            if faces is not None:
                find_pack(list(faces.roots()), pack)
        except FaceAnalysisError as exc:  # the folder and files; the list of folders searched is for errors
            notes.append(f"{PREFIX} ⚠ {str(exc).split(' Looked in:')[0]}")
    if not onnxruntime_present():
        notes.append(
            f"{PREFIX} ⚠ onnxruntime is not installed; in this extension's folder run, with the WebUI's "
            "Python: python -m ipadapter_ext.face_setup"
        )
    return notes


_SERVICE = FacePreprocessorService()


def serve_face_preprocessors(*_args: Any) -> None:
    """The callback (``on_before_ui`` takes no argument, ``on_app_started`` two)."""
    try:
        _SERVICE.refresh()
    except Exception as exc:  # never break the WebUI's start over an optional feature
        print(f"{PREFIX} could not serve ControlNet's face preprocessors: {exc}")


def register_face_preprocessors(script_callbacks: Any) -> None:
    if hasattr(script_callbacks, "on_before_ui"):
        register(script_callbacks.on_before_ui, serve_face_preprocessors, "ipadapter_face_preprocessors")
    register(script_callbacks.on_app_started, serve_face_preprocessors, "ipadapter_face_preprocessors_started")
