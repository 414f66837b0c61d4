"""Fixtures for the face-preprocessor tests: ControlNet's and Forge's insightface users as the WebUI
loads them (tests/doubles/sd-webui-controlnet, tests/doubles/forge_builtin), the tiny buffalo_l
and antelopev2 packs of tests/face_onnx.py, and a Python in which insightface cannot be imported.

The WebUI side is the ``webui`` fixture (tests/a1111_env.py): our script loaded as the WebUI
loads it, its callbacks in the script_callbacks double, models in ``tmp_path/models``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.face_onnx import write_antelope_pack, write_pack

DOUBLES = Path(__file__).parent / "doubles"
CN_ROOT = DOUBLES / "sd-webui-controlnet"
FORGE_BUILTIN = DOUBLES / "forge_builtin"
FORGE_DOUBLES = DOUBLES / "forge"
#: Module names the doubles bring; removed between loads (a "reload" is a fresh import).
CN_MODULES = ("scripts", "annotator")
FORGE_MODULES = ("modules_forge", "legacy_preprocessors", "lib_ipadapter")


def write_packs(models: Path) -> Path:
    """Both tiny packs under ``models/insightface/models``; returns ``models``."""
    write_pack(models / "insightface" / "models" / "buffalo_l")
    write_antelope_pack(models / "insightface" / "models" / "antelopev2")
    return models


def purge(prefixes: tuple[str, ...]) -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in prefixes]:
        del sys.modules[name]


class _NoInsightface:
    """A meta-path finder under which ``import insightface`` fails as in a venv without it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "insightface":
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


@contextmanager
def insightface_missing() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in sys.modules if n.split(".")[0] == "insightface"]:
            mp.delitem(sys.modules, name)
        mp.setattr(sys, "meta_path", [_NoInsightface(), *sys.meta_path])
        importlib.invalidate_caches()
        yield


def extension(name: str, path: Path) -> SimpleNamespace:
    """An entry of ``modules.extensions.active()``."""
    return SimpleNamespace(name=name, canonical_name=name, path=str(path))


class ControlNetDouble:
    """sd-webui-controlnet's double, imported the way its ``scripts/controlnet.py`` imports it
    (``import scripts.preprocessor``), with its preprocessor model folder set to ``models``."""

    def __init__(self, models: Path) -> None:
        self.models = models
        self.registry = None
        self.processor = None

    def load(self) -> ControlNetDouble:
        purge(CN_MODULES)
        importlib.invalidate_caches()
        importlib.import_module("scripts.preprocessor")
        importlib.import_module("annotator.annotator_path").models_path = str(self.models)
        self.registry = sys.modules["scripts.supported_preprocessor"].Preprocessor
        self.processor = sys.modules["scripts.preprocessor.legacy.processor"]
        return self

    def get(self, name: str):
        return self.registry.get_preprocessor(name)

    def holders(self) -> list:
        return [self.processor.g_insight_face_model, self.processor.g_insight_face_instant_id_model]

    def outputs(self, image, res: int = 512) -> dict:
        """What each insightface preprocessor gives for ``image`` (RGB uint8) at ``res``."""
        return {
            "instant_id_face_keypoints": self.get("instant_id_face_keypoints")(image, resolution=res),
            "instant_id_face_embedding": self.get("instant_id_face_embedding")(image, resolution=res),
            "ip-adapter_face_id": self.get("ip-adapter_face_id")(image, resolution=res),
            "ip-adapter_face_id_plus": self.get("ip-adapter_face_id_plus")(image, resolution=res)["face_embed"],
            "ip-adapter_pulid": self.get("ip-adapter_pulid")(image, resolution=res),
        }


def controlnet_double(tmp_path, monkeypatch) -> Iterator[ControlNetDouble]:
    """The ``controlnet`` fixture: the ControlNet double on ``sys.path`` and enabled, not yet
    loaded (``.load()``), with the tiny packs in ``tmp_path/models`` (the ``webui`` fixture's
    model folder)."""
    from modules import extensions

    models = write_packs(tmp_path / "models")
    monkeypatch.syspath_prepend(str(CN_ROOT))
    monkeypatch.setattr(extensions, "installed", [extension("sd-webui-controlnet", CN_ROOT)])
    yield ControlNetDouble(models)
    purge(CN_MODULES)


class ForgeDouble:
    """Forge's registry and its insightface users: the two built-in scripts executed as the WebUI
    executes scripts (fresh module objects each time; a UI reload executes them again)."""

    def __init__(self, models: Path) -> None:
        self.models = models

    def load(self) -> ForgeDouble:
        purge(FORGE_MODULES)
        importlib.invalidate_caches()
        self.registry = importlib.import_module("modules_forge.shared").supported_preprocessors
        self.legacy = importlib.import_module("legacy_preprocessors.preprocessor")
        self.legacy.models_path = str(self.models)
        self.ipadapter = importlib.import_module("lib_ipadapter.IPAdapterPlus")
        self.ipadapter.INSIGHTFACE_DIR = str(self.models / "insightface")
        self.run_scripts()
        return self

    def run_scripts(self) -> None:
        """What the WebUI does with the two scripts at start and at each UI reload."""
        for name in ("script_legacy_preprocessors", "script_forge_ipadapter"):
            spec = importlib.util.spec_from_file_location(name, FORGE_BUILTIN / f"{name}.py")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))

    def get(self, name: str):
        return self.registry[name]


def forge_double(tmp_path, monkeypatch) -> Iterator[ForgeDouble]:
    """The ``forge`` fixture: Forge's doubles on ``sys.path``, its built-in ControlNet enabled,
    not yet loaded."""
    from modules import extensions

    models = write_packs(tmp_path / "models")
    monkeypatch.syspath_prepend(str(FORGE_BUILTIN))
    monkeypatch.syspath_prepend(str(FORGE_DOUBLES))
    monkeypatch.setattr(extensions, "installed", [extension("sd_forge_controlnet", FORGE_BUILTIN)])
    yield ForgeDouble(models)
    purge(FORGE_MODULES)


def fresh_service(monkeypatch):
    """The ``service`` fixture: a fresh serving state (nothing announced yet) for the loaded
    script's callbacks."""
    from ipadapter_ext.host import face_preprocessors

    fresh = face_preprocessors.FacePreprocessorService()
    monkeypatch.setattr(face_preprocessors, "_SERVICE", fresh)
    return fresh


def webui_start() -> None:
    """The callbacks the WebUI runs once every script is loaded: ``before_ui`` then ``app_started``."""
    from fastapi import FastAPI
    from modules import script_callbacks

    script_callbacks.before_ui_callback()
    script_callbacks.app_started_callback(None, FastAPI())
