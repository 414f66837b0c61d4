"""ControlNet's insightface preprocessors, served by our face analysis when insightface is missing.

sd-webui-controlnet (``instant_id_face_embedding``, ``instant_id_face_keypoints``,
``ip-adapter_face_id``, ``ip-adapter_face_id_plus``; PuLID reads the InstantID embedding) and the
Forge family (the same legacy table, plus ``sd_forge_ipadapter``'s ``InsightFace (InstantID)`` and
``InsightFace+CLIP-H (IPAdapter)``) all reach insightface through one object each:

* legacy preprocessors call methods of an ``InsightFaceModel`` holder, which keeps its
  ``FaceAnalysis`` in ``.model`` (created by ``load_model`` only while ``.model`` is None) and
  downloads antelopev2 unless ``.antelopev2_installed``;
* Forge's IP-Adapter preprocessors keep theirs in ``.cached_insightface``, and its
  ``lib_ipadapter`` module keeps ``insightface.utils.face_align`` in a module global,
  ``insightface_face_align``, for FaceID-Plus crops.

Serving means filling those empty slots with :class:`~..core.face.insightface_compat.InsightFaceApp`
and :data:`FACE_ALIGN`: their resizing, padding, face choice, keypoint drawing and error handling
run unchanged, on our numbers, so outputs are theirs by construction. Nothing is replaced or
wrapped; a slot already holding an insightface object is left alone, and nothing is done at all
when insightface imports. Holders are found from the registry entries themselves (the functions
they call), never by importing ControlNet's modules, so the same code covers every host that
keeps these structures.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The module global of Forge's ``lib_ipadapter/IPAdapterPlus.py`` holding ``face_align``.
FACE_ALIGN_GLOBAL = "insightface_face_align"
#: sd-webui-controlnet's registry module, relative to the extension folder.
CONTROLNET_REGISTRY_FILE = Path("scripts") / "supported_preprocessor.py"
#: The module holding the Forge family's registry dict ``supported_preprocessors``.
FORGE_REGISTRY_MODULE = "modules_forge.shared"
INSTANTID_PACK = "antelopev2"
FACEID_PACK = "buffalo_l"


def insightface_importable() -> bool:
    """Whether ``insightface.app`` imports. A broken install (a missing compiled part, a numpy or
    albumentations mismatch: the usual failures) counts as missing, as it does for ControlNet."""
    try:
        if importlib.util.find_spec("insightface") is None:
            return False
        importlib.import_module("insightface.app")
    except Exception:  # any import-time failure: the preprocessors would fail the same way
        return False
    return True


def is_holder(obj: Any) -> bool:
    """An ``InsightFaceModel``-like holder: a pack name, a ``model`` slot and a ``load_model``."""
    return (
        obj is not None
        and not isinstance(obj, type)
        and isinstance(getattr(obj, "face_analysis_model_name", None), str)
        and hasattr(obj, "model")
        and callable(getattr(obj, "load_model", None))
    )


def holders_of(function: Any, depth: int = 0) -> list[Any]:
    """The holders a preprocessor's ``call_function`` uses: the owner of a bound method (through
    ``functools.partial``), or the module-level holders a plain function names (``face_id_plus``)."""
    if depth > 3 or function is None:
        return []
    if isinstance(function, functools.partial):
        return holders_of(function.func, depth + 1)
    owner = getattr(function, "__self__", None)
    if is_holder(owner):
        return [owner]
    code, scope = getattr(function, "__code__", None), getattr(function, "__globals__", None)
    if code is None or not isinstance(scope, dict):
        return []
    found = []
    for name in code.co_names:
        value = scope.get(name)
        if is_holder(value) and all(value is not f for f in found):
            found.append(value)
    return found


def loader_pack(name: str, preprocessor: Any) -> str:
    """The pack a Forge IP-Adapter preprocessor loads: antelopev2 for InstantID, buffalo_l otherwise."""
    text = f"{name} {type(preprocessor).__name__}".lower().replace("-", "").replace("_", "")
    return INSTANTID_PACK if "instantid" in text else FACEID_PACK


def face_align_module(preprocessor: Any) -> Any | None:
    """The module whose ``insightface_face_align`` a Forge IP-Adapter preprocessor's loader sets:
    found through the loader function its ``load_insightface`` calls."""
    method = getattr(type(preprocessor), "load_insightface", None)
    code, scope = getattr(method, "__code__", None), getattr(method, "__globals__", None)
    if code is None or not isinstance(scope, dict):
        return None
    for name in code.co_names:
        owner = getattr(scope.get(name), "__self__", None)
        module = sys.modules.get(getattr(type(owner), "__module__", "")) if owner is not None else None
        if module is not None and hasattr(module, FACE_ALIGN_GLOBAL):
            return module
    return None


@dataclass
class ServeReport:
    """What one pass over a registry did: the names now answered by our face analysis, and
    those left with insightface objects someone had already loaded."""

    served: list[str] = field(default_factory=list)
    packs: set[str] = field(default_factory=set)
    kept: list[str] = field(default_factory=list)


def _serve_one(name: str, pre: Any, app_for: Callable[[str], Any], face_align: Any, is_ours) -> tuple[bool, set]:
    """(served, packs) for one registry entry; (False, ∅) for an entry without insightface."""
    holders = holders_of(getattr(pre, "call_function", None))
    if holders:
        for holder in holders:
            if holder.model is None:
                holder.model = app_for(holder.face_analysis_model_name)
                if hasattr(holder, "antelopev2_installed"):
                    holder.antelopev2_installed = True  # their downloader would fetch what we find
        mine = all(is_ours(h.model) for h in holders)
        return mine, {h.face_analysis_model_name for h in holders if is_ours(h.model)}
    if hasattr(pre, "cached_insightface") and callable(getattr(pre, "load_insightface", None)):
        pack = loader_pack(name, pre)
        if pre.cached_insightface is None:
            pre.cached_insightface = app_for(pack)
        module = face_align_module(pre)
        if module is not None and getattr(module, FACE_ALIGN_GLOBAL) is None:
            setattr(module, FACE_ALIGN_GLOBAL, face_align)
        mine = is_ours(pre.cached_insightface)
        return mine, {pack} if mine else set()
    raise LookupError  # not an insightface user


def serve(
    registry: Mapping[str, Any],
    app_for: Callable[[str], Any],
    face_align: Any,
    is_ours: Callable[[Any], bool],
) -> ServeReport:
    """Fill the empty insightface slots of ``registry`` (name → preprocessor) with
    ``app_for(pack)`` and ``face_align``; idempotent (slots already ours count as served). An
    entry that cannot be read is skipped: other extensions register preprocessors here too."""
    report = ServeReport()
    for name, pre in list(registry.items()):
        try:
            mine, packs = _serve_one(name, pre, app_for, face_align, is_ours)
        except Exception:  # LookupError: no insightface in it; anything else: not ours to judge
            continue
        (report.served if mine else report.kept).append(name)
        report.packs |= packs
    for name, pre in registry.items():  # PuLID: its face embedding is a served preprocessor's
        deps = getattr(pre, "preprocessor_deps", None) or ()
        if name not in report.served and isinstance(deps, (list, tuple)) and any(d in report.served for d in deps):
            report.served.append(name)
    return report


def _module_file(module: Any) -> str | None:
    """A loaded module's ``__file__``, read from its namespace (lazy module proxies, which some
    packages put in ``sys.modules``, would import things on attribute access)."""
    try:
        value = vars(module).get("__file__")
    except TypeError:  # None placeholders and objects without a namespace
        return None
    return value if isinstance(value, str) else None


def _under(path: str | None, root: Path) -> bool:
    if not path:
        return False
    try:
        Path(path).resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def controlnet_registry(roots: Iterable[Path]) -> Mapping[str, Any] | None:
    """sd-webui-controlnet's ``Preprocessor.all_processors`` (label → preprocessor), from the
    loaded module of ``scripts/supported_preprocessor.py`` in one of ``roots``; None if not loaded.
    (A1111 also executes that file as a stand-alone script, whose registry stays empty.)"""
    roots = list(roots)
    best: Mapping[str, Any] | None = None
    for module in list(sys.modules.values()):
        path = _module_file(module)
        if not path or not path.endswith("supported_preprocessor.py"):
            continue
        if not any(Path(path).resolve() == (r / CONTROLNET_REGISTRY_FILE).resolve() for r in roots):
            continue
        table = getattr(vars(module).get("Preprocessor"), "all_processors", None)
        if isinstance(table, dict) and table and (best is None or len(table) > len(best)):
            best = table
    return best


def forge_registry() -> Mapping[str, Any] | None:
    """The Forge family's ``modules_forge.shared.supported_preprocessors`` (name → preprocessor),
    if that module is loaded (looked up, never imported)."""
    module = sys.modules.get(FORGE_REGISTRY_MODULE)
    table = vars(module).get("supported_preprocessors") if module is not None else None
    return table if isinstance(table, dict) else None


def registries(controlnet_roots: Iterable[Path]) -> list[tuple[str, Mapping[str, Any]]]:
    """(host name, registry) for every ControlNet preprocessor registry loaded in this process."""
    found = []
    table = controlnet_registry(controlnet_roots)
    if table is not None:
        found.append(("sd-webui-controlnet", table))
    forge = forge_registry()
    if forge:
        found.append(("Forge built-in", forge))
    return found


def annotator_models_path(controlnet_roots: Iterable[Path]) -> Path | None:
    """sd-webui-controlnet's preprocessor model folder as it resolved it (its setting or command
    line flag, else ``annotator/downloads``), read from its loaded ``annotator_path`` module."""
    roots = list(controlnet_roots)
    for module in list(sys.modules.values()):
        path = _module_file(module)
        if path and path.endswith("annotator_path.py") and any(_under(path, r) for r in roots):
            value = vars(module).get("models_path")
            if isinstance(value, str) and value:
                return Path(value)
    return None
