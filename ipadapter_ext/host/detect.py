"""Which WebUI family the extension runs in, told by the modules the host provides.

Folder names say nothing (every fork keeps A1111's layout, and both Forge families ship a
``modules_forge`` package), so each family is recognised by the modules its glue calls:

* **Forge 2** (stable-diffusion-webui-forge, ersatzForge): ``modules_forge`` and the UNet patcher
  of its ``backend`` package, ``backend/patcher/unet.py``;
* **Forge 1** (reForge, Forge Classic): ``modules_forge/unet_patcher.py`` over ComfyUI's model
  patcher, ``ldm_patched/modules/model_patcher.py``;
* **AUTOMATIC1111**: neither.

Modules are *found*, never imported, and only on ``sys.path`` (not in ``sys.modules``): asking runs
none of the host's code, and a test that puts a host's doubles on the path and takes them off again
gets an honest answer each time.
"""

from __future__ import annotations

import importlib.machinery
import sys
from dataclasses import dataclass

#: (key, name on the console, modules that must all exist), tried in this order
FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("forge", "Forge 2 (Forge, ersatzForge)", ("modules_forge", "backend.patcher.unet")),
    ("forge1", "Forge 1 (reForge, Forge Classic)", ("modules_forge.unet_patcher", "ldm_patched.modules.model_patcher")),
)
A1111 = ("a1111", "AUTOMATIC1111", ())


def provides(dotted: str) -> bool:
    """Whether the module ``dotted`` exists on ``sys.path``. A submodule is looked up in its
    parent's search locations, so no package ``__init__`` runs."""
    locations: list[str] | None = None
    spec = None
    parts = dotted.split(".")
    for depth in range(1, len(parts) + 1):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), locations)
        if spec is None:
            return False
        if depth < len(parts):
            if spec.submodule_search_locations is None:  # a plain module has no submodules
                return False
            locations = list(spec.submodule_search_locations)
    return spec is not None


@dataclass(frozen=True)
class Detected:
    """The family found, and the evidence, for the start-up line."""

    key: str
    name: str
    found: tuple[str, ...]
    version: str = ""

    def startup_line(self) -> str:
        evidence = f"found {', '.join(self.found)}" if self.found else "no modules_forge package"
        version = f"; host version {self.version}" if self.version else ""
        line = f"IP-Adapter: host family {self.name} ({evidence}{version})."
        if self.key == A1111[0] and provides("modules_forge"):
            line += (
                " This WebUI has a modules_forge package but neither Forge 2's backend/patcher/unet.py nor "
                "Forge 1's modules_forge/unet_patcher.py with ldm_patched/: an unknown fork, treated as AUTOMATIC1111; "
                "image prompts may not apply. Please report which WebUI this is."
            )
        return line


def forge_version() -> str:
    """The version string Forge and its forks keep in ``modules_forge/forge_version.py``, when the
    host has already imported it (it prints it at start-up); never imported here."""
    module = sys.modules.get("modules_forge.forge_version")
    return str(getattr(module, "version", "") or "")


def detect() -> Detected:
    for key, name, modules in FAMILIES:
        if all(provides(m) for m in modules):
            return Detected(key, name, modules, forge_version())
    return Detected(*A1111)
