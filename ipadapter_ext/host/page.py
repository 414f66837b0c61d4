"""The accordion inside the WebUI page (every host family): components, info line, paste fields, downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import IPAdapterError
from ..core.load.compat import check_unet
from ..core.load.known_models import KNOWN_MODELS, find_known_model
from ..schema import DEFAULTS
from ..ui.infotext import KEY, PASTE_FIELDS, paste_notice, paste_value, pasted_unit
from .models import engine
from .settings import opt
from .unet import model_signature


def face_status(info: Any) -> str:
    """For FaceID models: whether onnxruntime and the face pack are there, and what to do if not."""
    from ..core.load.adapter_info import FACE_PACK_BY_VARIANT, EncoderOutput

    if info.encoder.output not in (EncoderOutput.FACE, EncoderOutput.FACE_AND_PENULTIMATE):
        return ""
    from ..core.face import FaceAnalysisError, find_pack
    from ..face_setup import onnxruntime_present

    faces = engine().faces
    notes = []
    if not onnxruntime_present():
        notes.append("⚠ needs onnxruntime: restart the WebUI (it is installed when a FaceID model is present) or "
                     "run `python -m ipadapter_ext.face_setup` in the WebUI's venv")  # fmt: skip
    try:
        if faces is not None:
            wanted = FACE_PACK_BY_VARIANT.get(info.variant) or faces.pack_name()
            pack = find_pack(list(faces.roots()), wanted)
            notes.append(f"face pack: {pack.name} ({pack.folder})")
    except FaceAnalysisError as exc:
        notes.append(f"⚠ {exc}")
    return "".join(f"  \n{n}" for n in notes)


def _article(name: str) -> str:
    return "an" if name[:1] in "AEIOU" else "a"


def ui_hooks() -> Any:
    from ..ui.accordion import UiHooks

    def adapters() -> list[str]:
        return [e.name for e in engine().registry.adapters() if e.info is not None]

    def encoders() -> list[str]:
        return [e.name for e in engine().registry.encoders() if e.spec is not None]

    def describe(model: str, _encoder: str) -> str:
        try:
            entry = engine().registry.adapter(model)
        except IPAdapterError:
            return ""
        if entry.info is None:
            return f"⚠ {entry.error}"
        text = entry.info.describe() + face_status(entry.info)
        if entry.info.variant == "flux-redux":
            text += "  \nThe weight is Redux's strength; its tokens go to the prompt's side only (no negative image)."
        if getattr(entry.info, "arch", "sd") == "flux":
            from . import select

            missing = select().FLUX_MISSING
            if missing:
                text += f"  \n⚠ {_article(entry.info.name)} {entry.info.name}: {missing}"
        try:
            from modules import shared

            check_unet(entry.info, model_signature(shared.sd_model), f"'{model}'")
        except IPAdapterError as exc:
            text += f"  \n⚠ {exc}"
        except Exception:  # no model loaded yet
            pass
        return text

    def is_redux(model: str) -> bool:
        try:
            info = engine().registry.adapter(model).info
        except IPAdapterError:
            return False
        return info is not None and info.variant == "flux-redux"

    default_weight = float(opt("ipadapter_default_weight", DEFAULTS.weight))
    return UiHooks(
        adapters,
        encoders,
        describe,
        lambda: engine().registry.refresh(),
        default_weight,
        known_models=lambda: [m.name for m in KNOWN_MODELS],
        download=download_models,
        attention_map_default=bool(opt("ipadapter_attention_map", False)),
        is_redux=is_redux,
    )


def download_models(names: list[str] | None) -> str:
    """The UI's "Download official models": sha256-checked, atomic, then the lists are rescanned."""
    from modules.paths_internal import models_path

    from ..download import download, target_dir

    lines = []
    for name in names or []:
        model = find_known_model(name)
        if model is None:
            lines.append(f"✗ {name}: not an official model this version knows")
            continue
        try:
            path = download(model, target_dir(model, Path(models_path)))
            lines.append(f"✓ {name} → models/{path.parent.name}")
        except IPAdapterError as exc:
            lines.append(f"✗ {exc}")
        except OSError as exc:  # no network, disk full …
            lines.append(f"✗ {name}: {exc}. Download it by hand into models/{model.folder}.")
    engine().registry.refresh()
    return "  \n".join(lines) or "Choose one or more models first."


def build_ui(script: Any, is_img2img: bool) -> list:
    from modules.ui_components import InputAccordion, ToolButton

    from ..ui.accordion import build

    built = build(InputAccordion, script.elem_id, int(opt("ipadapter_units", 3)), ui_hooks(), ToolButton, is_img2img)
    script.infotext_fields = paste_fields(built)
    script.paste_field_names = [KEY.format(n) for n in range(1, len(built.units) + 1)]
    return built.inputs


def paste_fields(built: Any) -> list[tuple[Any, Any]]:
    """(component, params → value) pairs restoring every unit from a pasted infotext."""
    fields: list[tuple[Any, Any]] = [
        (built.enabled, lambda d: any(pasted_unit(d, n) is not None for n in range(1, len(built.units) + 1)))
    ]
    for n, unit in enumerate(built.units, start=1):

        def field(name: str, n: int = n) -> Any:
            return lambda d: None if (u := pasted_unit(d, n)) is None else paste_value(u, name)

        fields += [
            (unit["enabled"], lambda d, n=n: pasted_unit(d, n) is not None),
            (unit["info"], lambda d, n=n: None if (u := pasted_unit(d, n)) is None else paste_notice(u)),
        ]
        fields += [(unit[name], field(name)) for name in PASTE_FIELDS]
    return fields
