"""Process-wide model state (registry and caches), the loaded checkpoint's signature and model hashes."""

from __future__ import annotations

import contextlib
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from ..core.encode.faces import FaceReferences
from ..core.engine import ADAPTERS_KEPT, ENCODERS_KEPT, Engine
from ..core.load.compat import UNetSignature
from ..core.load.registry import ModelRegistry
from ..interop.controlnet import extra_model_dirs, face_roots
from .settings import opt
from .unet import model_signature


class _EngineHolder:
    """The process-wide caches (models, embeddings); created on first use, never at import."""

    engine: Engine | None = None

    @classmethod
    def get(cls) -> Engine:
        if cls.engine is None:
            from modules.paths_internal import models_path

            root = Path(models_path)
            adapters = root / "ipadapter"
            adapters.mkdir(parents=True, exist_ok=True)
            extra = [Path(p.strip()) for p in str(opt("ipadapter_extra_folders", "")).split(",") if p.strip()]
            cn_models, cn_encoders = extra_model_dirs()  # folders sd-webui-controlnet keeps
            styles = [root / "style_models"] if (root / "style_models").is_dir() else []  # Redux, where a host keeps it
            controlnet, _ = forge_controlnet_dirs(root)
            registry = ModelRegistry(
                [adapters, *styles, *extra],
                [root / "clip_vision", *extra, *cn_encoders],
                [controlnet, *cn_models],
            )
            faces = FaceReferences(lambda: face_pack_roots(root), lambda: str(opt("ipadapter_face_pack", "buffalo_l")))
            cls.engine = Engine(registry, embedding_cache_size=int(opt("ipadapter_cache_size", 32)), faces=faces)
            apply_cache_settings(cls.engine)
        return cls.engine

    @classmethod
    def reset(cls) -> None:
        cls.engine = None


def engine() -> Engine:
    return _EngineHolder.get()


def forge_controlnet_dirs(models: Path) -> tuple[Path, Path]:
    """(ControlNet models, preprocessor models) folders. Forge and its forks (Forge dfdcbab6, reForge
    3b56b268, Forge Classic 1f95d717, ersatzForge fca12a2) keep them in ``modules_forge/shared.py``
    as ``controlnet_dir`` and ``preprocessor_dir``, moved by ``--controlnet-dir`` and
    ``--controlnet-preprocessor-models-dir``; that module is read when the host has imported it
    (never imported here: it parses arguments and makes folders). Elsewhere the defaults,
    ``models/ControlNet`` and ``models/ControlNetPreprocessor``."""
    shared = sys.modules.get("modules_forge.shared")
    controlnet = getattr(shared, "controlnet_dir", None) or models / "ControlNet"
    preprocessor = getattr(shared, "preprocessor_dir", None) or models / "ControlNetPreprocessor"
    return Path(controlnet), Path(preprocessor)


def face_pack_roots(models: Path) -> list[Path]:
    """Where face analysis packs are looked for: ``models/insightface/models/<pack>`` (the convention
    of other extensions), Forge's preprocessor folder, then ControlNet's downloads."""
    return [models, forge_controlnet_dirs(models)[1], *face_roots()]


def loaded_signature() -> UNetSignature | None:
    """The loaded checkpoint's UNet signature, or ``None`` when no model is loaded."""
    from modules import shared

    try:
        return model_signature(shared.sd_model)
    except Exception:  # no model loaded (yet), or one that is not an LDM UNet
        return None


def model_hash(name: str) -> str | None:
    """The WebUI's cached sha256 of an adapter file, shortened like checkpoint hashes."""
    try:
        entry = engine().registry.adapter(name)
        from modules import hashes

        digest = hashes.sha256(str(entry.path), f"ipadapter/{entry.name}")
    except Exception:  # unknown model (reported at sampling) or no hash available
        return None
    return digest[:10] if digest else None


def apply_cache_settings(target: Engine | None = None) -> None:
    """The cache bounds from the settings, applied to the live caches (shrinking one evicts at
    once; nothing to do before first use). "Empty after each generation" empties them now too."""
    live = target or _EngineHolder.engine
    if live is None:
        return
    references = int(opt("ipadapter_cache_size", 32))
    live.embeddings.resize(references)
    if live.faces is not None:
        live.faces.resize(references)
    live.adapters.resize(int(opt("ipadapter_adapters_kept", ADAPTERS_KEPT)))
    live.encoders.resize(int(opt("ipadapter_encoders_kept", ENCODERS_KEPT)))
    if opt("ipadapter_unload_after", False):
        live.clear_caches()


#: The settings' on-change callback (every cache setting).
cache_size_changed = apply_cache_settings


def after_generation() -> None:
    """A generation ended: with "empty the caches after each generation", empty them."""
    if _EngineHolder.engine is not None and opt("ipadapter_unload_after", False):
        _EngineHolder.engine.clear_caches()
        free_memory()


def generation_queue() -> AbstractContextManager:
    """The WebUI's generation queue (``modules.call_queue.queue_lock``, what its own txt2img,
    img2img and interrogate routes hold): routes that run models wait for the generation."""
    try:
        from modules.call_queue import queue_lock
    except ImportError:  # a host without one: the engine's own lock still serialises the work
        return contextlib.nullcontext()
    return queue_lock


def free_memory() -> None:
    """Return what emptied caches held: Python's garbage, then the host's device cache."""
    import gc

    gc.collect()
    try:
        from modules import devices

        devices.torch_gc()
    except Exception:  # a host (or double) without it: the garbage collection is what matters
        pass


def folders_changed() -> None:
    """New folders: the registry is rebuilt on next use (loaded models and embeddings go too)."""
    _EngineHolder.reset()
