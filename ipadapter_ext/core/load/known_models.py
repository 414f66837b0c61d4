"""The official IP-Adapter and CLIP-vision files that ``python -m ipadapter_ext.download`` fetches.

Pure data: no I/O and no imports beyond the standard library. Every file comes from its publisher's
Hugging Face repository (``https://huggingface.co/<repo>/resolve/main/<path>``) and is checked
against the SHA-256 recorded here before it is put in place.

Where the hashes come from: each one was found in public material, never computed or guessed here.
The primary source for all of them is SwarmUI's automatic IP-Adapter download list,
``mcmonkeyprojects/SwarmUI`` ``src/BuiltinExtensions/ComfyUIBackend/WorkflowGeneratorSteps.cs``
(``requireIPAdapterModel`` / ``RequireVisionModel`` calls, which pair each official URL with its
hash; snapshot 062407c7bb488fc76ac61044cb929f0d0a30e60f). Where a second public project records the
same hash for the same URL it is named next to the entry.

``size`` is filled in only where at least two independent public download manifests agree on the
byte count; otherwise it is ``None`` and only the hash is checked (a wrong size would refuse a
good file, a missing one costs nothing since the hash decides).

FaceID models (``h94/IP-Adapter-FaceID``) are not listed: the engine cannot use them yet (they need
a face embedding). The mechanism supports that repository as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: Where each kind goes under the WebUI's ``models`` folder.
FOLDERS: dict[str, str] = {"adapter": "ipadapter", "encoder": "clip_vision"}
#: The repositories files may come from: the publisher's own.
OFFICIAL_REPOS = ("h94/IP-Adapter", "h94/IP-Adapter-FaceID")

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class KnownModel:
    """One downloadable file: saved as ``name`` in the folder for its ``kind``."""

    name: str  # the file name it is saved under (no folders)
    repo: str  # Hugging Face repository, "owner/name"
    path: str  # path of the file inside the repository
    kind: Literal["adapter", "encoder"]
    sha256: str  # lower-case hex digest of the whole file
    size: int | None  # bytes, where known
    description: str

    def __post_init__(self) -> None:
        if self.kind not in FOLDERS:
            raise ValueError(f"{self.name}: kind must be one of {sorted(FOLDERS)}, not {self.kind!r}")
        if not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{self.name}: size must be positive or None, got {self.size!r}")

    @property
    def folder(self) -> str:
        """The folder under the WebUI's ``models`` directory: ``ipadapter`` or ``clip_vision``."""
        return FOLDERS[self.kind]


_IPA = "h94/IP-Adapter"

KNOWN_MODELS: tuple[KnownModel, ...] = (
    # -- SD 1.5 adapters ----------------------------------------------------------------------
    KnownModel(
        "ip-adapter_sd15.safetensors",
        _IPA,
        "models/ip-adapter_sd15.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs; also nixified-ai/flake flake-modules/models/models.nix
        "289b45f16d043d0bf542e45831f971dcdaabe18b656f11e86d9dfba7e9ee3369",
        44_642_768,
        "SD 1.5, standard strength; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter_sd15_light_v11.bin",
        _IPA,
        "models/ip-adapter_sd15_light_v11.bin",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs (saved there as sd15_light_v11.bin, same URL)
        "350b63a57847c163e2e984b01090f85ffe60eaae20f32b2b2c9e1ccc7ddd972b",
        None,
        "SD 1.5, light: follows the text prompt more; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter-plus_sd15.safetensors",
        _IPA,
        "models/ip-adapter-plus_sd15.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs; also nixified-ai/flake flake-modules/models/models.nix
        "a1c250be40455cc61a43da1201ec3f1edaea71214865fb47f57927e06cbe4996",
        98_183_288,
        "SD 1.5, plus: closer to the reference (patch tokens); uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter-plus-face_sd15.safetensors",
        _IPA,
        "models/ip-adapter-plus-face_sd15.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs
        "1c9edc21af6f737dc1d6e0e734190e976cfacf802d6b024b77aa3be922f7569b",
        None,
        "SD 1.5, plus face: takes a cropped face as reference; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter-full-face_sd15.safetensors",
        _IPA,
        "models/ip-adapter-full-face_sd15.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs (saved there as full_face_sd15.safetensors, same URL)
        "f4a17fb643bf876235a45a0e87a49da2855be6584b28ca04c62a97ab5ff1c6f3",
        None,
        "SD 1.5, full face: stronger face model; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter_sd15_vit-G.safetensors",
        _IPA,
        "models/ip-adapter_sd15_vit-G.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs
        "a26f736af07bb341a83dfea23713531d0575760e8ed947c68cb31a4c62d9c90b",
        None,
        "SD 1.5 with the bigG encoder; uses clip_vision_g",
    ),
    # -- SDXL adapters -----------------------------------------------------------------------
    KnownModel(
        "ip-adapter_sdxl.safetensors",
        _IPA,
        "sdxl_models/ip-adapter_sdxl.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs
        "ba1002529e783604c5f326d49f0122025392d1d20ac8d573b3eeb3e6dea4ebb6",
        702_585_376,
        "SDXL, standard; uses clip_vision_g",
    ),
    KnownModel(
        "ip-adapter_sdxl_vit-h.safetensors",
        _IPA,
        "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs; also nixified-ai/flake flake-modules/models/models.nix
        "ebf05d918348aec7abb02a5e9ecef77e0aaea6914a5c4ea13f50d45eb1681831",
        698_391_064,
        "SDXL, standard with the smaller ViT-H encoder; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter-plus_sdxl_vit-h.safetensors",
        _IPA,
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs
        "3f5062b8400c94b7159665b21ba5c62acdcd7682262743d7f2aefedef00e6581",
        847_517_512,
        "SDXL, plus: closer to the reference; uses clip_vision_h",
    ),
    KnownModel(
        "ip-adapter-plus-face_sdxl_vit-h.safetensors",
        _IPA,
        "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "adapter",
        # SwarmUI WorkflowGeneratorSteps.cs
        "677ad8860204f7d0bfba12d29e6c31ded9beefdf3e4bbd102518357d31a292c1",
        847_517_512,
        "SDXL, plus face: takes a cropped face as reference; uses clip_vision_h",
    ),
    # -- image encoders ----------------------------------------------------------------------
    KnownModel(
        "clip_vision_h.safetensors",
        _IPA,
        "models/image_encoder/model.safetensors",
        "encoder",
        # SwarmUI WorkflowGeneratorSteps.cs and WorkflowGenerator.cs; also nixified-ai/flake
        # flake-modules/models/models.nix
        "6ca9667da1ca9e0b0f75e46bb030f7e011f44f86cbfb8d5a36590fcd7507b030",
        2_528_373_448,
        "OpenCLIP ViT-H/14 image encoder, for every *_vit-h and SD 1.5 adapter except vit-G",
    ),
    KnownModel(
        "clip_vision_g.safetensors",
        _IPA,
        "sdxl_models/image_encoder/model.safetensors",
        "encoder",
        # SwarmUI WorkflowGeneratorSteps.cs
        "657723e09f46a7c3957df651601029f66b1748afb12b419816330f16ed45d64d",
        3_689_912_664,
        "OpenCLIP ViT-bigG/14 image encoder, for ip-adapter_sdxl and ip-adapter_sd15_vit-G",
    ),
)


def find_known_model(name: str, models: tuple[KnownModel, ...] = KNOWN_MODELS) -> KnownModel | None:
    """The entry saved under ``name`` (exact file name), or ``None``."""
    return next((m for m in models if m.name == name), None)
