"""Living beside sd-webui-controlnet (and Forge's built-in ControlNet).

Our hooks never replace ``forward``: they are torch hooks on ``attn2``, ``to_q``, ``to_out[0]``
and the UNet. ControlNet replaces the UNet's ``forward`` and, for its own IP-Adapter units, each
``attn2.forward`` per instance (saving and later restoring the attribute). Whatever order the two
install and remove in, neither can remove the other: torch runs our hooks around whichever
forward is installed, and ControlNet's saved/restored attribute never contains our code.
ControlNet's attn2 replacement calls ``self.to_q`` and ``self.to_out``, so our image term is added
on top of its own, and both apply, like two of our units.

Detection goes through the WebUI's extension list, never through the shared ``scripts``
package namespace that ControlNet itself imports from.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn

from .face_preprocessors import annotator_models_path

CONTROLNET_EXTENSIONS = ("sd-webui-controlnet", "sd_forge_controlnet")
#: Where sd-webui-controlnet keeps model files and its downloaded CLIP vision encoders.
MODEL_SUBDIRS = ("models",)
ENCODER_SUBDIRS = ("annotator/downloads/clip_vision",)


def controlnet_dirs() -> list[Path]:
    """Root folders of the enabled ControlNet extensions (empty when there is none)."""
    try:
        from modules import extensions
    except ImportError:
        return []
    found = []
    for ext in extensions.active():
        if getattr(ext, "canonical_name", ext.name).lower() in CONTROLNET_EXTENSIONS:
            found.append(Path(ext.path))
    return found


def face_roots() -> list[Path]:
    """Where ControlNet downloads insightface's packs (``<folder>/insightface/models/<pack>``): its
    preprocessor model folder as configured (setting or flag), and ``annotator/downloads``."""
    roots = controlnet_dirs()
    found = [annotator_models_path(roots)]
    found += [root / "annotator" / "downloads" for root in roots]
    out: list[Path] = []
    for folder in found:
        if folder is not None and folder.is_dir() and folder not in out:
            out.append(folder)
    return out


def extra_model_dirs() -> tuple[list[Path], list[Path]]:
    """(adapter folders, encoder folders) that ControlNet keeps inside its extension folder."""
    roots = controlnet_dirs()
    models = [root / sub for root in roots for sub in MODEL_SUBDIRS if (root / sub).is_dir()]
    encoders = [root / sub for root in roots for sub in ENCODER_SUBDIRS if (root / sub).is_dir()]
    return models, encoders


def controlnet_ipadapter_layers(attn2: Iterable[nn.Module]) -> int:
    """How many of these attn2 modules currently carry ControlNet's IP-Adapter replacement
    (it keeps its per-layer functions in ``ipadapter_hacks``)."""
    return sum(1 for m in attn2 if getattr(m, "ipadapter_hacks", None))


def coexistence_note(attn2: Iterable[nn.Module]) -> str | None:
    layers = controlnet_ipadapter_layers(attn2)
    if not layers:
        return None
    return (
        f"IP-Adapter: ControlNet's own IP-Adapter is also active on {layers} cross-attention layers; "
        "both apply, their image terms add up like two IP-Adapter units."
    )
