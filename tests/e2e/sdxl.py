"""A tiny random SDXL for the end-to-end suite: checkpoint, yaml, text-encoder configs, adapter.

A1111 builds an SDXL model from the ``.yaml`` beside its checkpoint (sgm's ``DiffusionEngine``),
so a checkpoint with SDXL's topology and tiny widths loads, samples and decodes like a real one
(a 64×64 step of the UNet takes about 35 ms on one idle CPU core). What :func:`write_tiny_sdxl`
writes (deterministic: fixed seeds):

``models/Stable-diffusion/e2e-tiny-sdxl.safetensors``
    Real SDXL key names and block structure: ``model.diffusion_model.*`` with SDXL's three levels
    (32, 32 and 64 channels here; SDXL: 320, 640, 1280), two res blocks per level, no attention at
    the first level and SDXL's transformer depths at the others (2 and 10, and 10 in the middle
    block), so the UNet has SDXL's 70 cross-attention layers; ``conditioner.embedders.0`` a 32-wide CLIP-L-style
    transformers text model, ``conditioner.embedders.1`` a 64-wide open_clip text tower
    (context width 32 + 64 = 96, pooled width 64, ``adm_in_channels`` 64 + 6·256);
    ``first_stage_model`` a small VAE (factor 8). Norm affines are 1±0.1 / 0±0.1 and no layer is
    zero: random text encoders with default affines give NaN in A1111's emphasis step.
``models/Stable-diffusion/e2e-tiny-sdxl.yaml``
    The sgm config (written as JSON, which YAML reads).
``models/e2e-tiny-sdxl-clip-l/``
    ``config.json`` of embedders.0 and the real CLIP BPE tokenizer (``vocab.json``/``merges.txt``
    built from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` in the WebUI's environment), so
    ``CLIPTokenizer.from_pretrained`` works offline; A1111 takes the weights from the checkpoint.
``<WebUI's open_clip>/model_configs/e2e-tiny-sdxl-bigg.json``
    open_clip builds embedders.1 from a registered architecture name; this file registers the
    tiny one (``version: null`` in the yaml, so nothing is downloaded).
``models/ipadapter/e2e-tiny-sdxl-base.safetensors``
    A random "base" (image-embeds) IP-Adapter sized to the checkpoint's 70 attn2 layers. It fits
    the session's tiny CLIP vision encoder (``e2e-tiny-clip``, 40-wide image embeds), which
    :func:`~tests.e2e.webui.write_tiny_models` writes; no second encoder is needed.

Live previews: on its first SDXL generation A1111 loads (and, when absent, downloads)
``VAE-approx/vaeapprox-sdxl.pt``. Offline that fails, so the SDXL tests send
:data:`NO_APPROX_PREVIEW` per request instead of writing a file into the install's
``VAE-approx`` folder: live previews off, and the "Approx cheap" method, because ersatzForge has
no ``live_previews_enable`` and loads the "Approx NN" model whenever that is the preview method.

When: ``WEBUI_E2E_SDXL=1`` writes the files, ``0`` never does; unset (the default) writes them
for an A1111 install and not for the Forge families, whose loaders take SDXL's sizes from bundled
configs (Forge 2's Hugging Face configs, Forge 1's ``model_detection``) and cannot load a tiny one.
Writing takes about a second. Only in ``WEBUI_ROOT`` mode; everything written is listed for
removal after the session (kept with ``WEBUI_E2E_KEEP=1``; a later run then finds two checkpoints
and needs ``WEBUI_CKPT``).

**Full-size SDXL** (the Forge families): a checkpoint with SDXL's real sizes (random weights do;
about 7 GB in fp16) placed in ``models/Stable-diffusion``, named by ``WEBUI_SDXL_CKPT`` or found
there by its shapes (70 cross-attention layers over a 2048-wide context, read from the file's
header). The session writes only ``models/ipadapter/e2e-sdxl-base.safetensors``, a random "base"
adapter sized to it (:func:`write_full_sdxl_adapter`). Loading it takes about 14 GB of RAM on CPU
in fp32, so the SDXL tests skip, saying so, when less is available (``WEBUI_SDXL_MIN_FREE_GB``,
default 12).

Torch and safetensors are imported only when writing, as in :mod:`tests.e2e.webui`.

This module decides whether and where to write; the pieces live beside it, one job each:
:mod:`tests.e2e.sdxl_spec` (the sizes they share), :mod:`tests.e2e.sdxl_shapes` (the
checkpoint's tensors) and :mod:`tests.e2e.sdxl_configs` (the yaml, configs and tokenizer).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .sdxl_configs import clip_l_config, open_clip_config, sdxl_config, write_text, write_tokenizer
from .sdxl_shapes import checkpoint_shapes, random_state_dict
from .sdxl_spec import OPEN_CLIP_ARCH, SPEC, Spec

CHECKPOINT_FILE = "e2e-tiny-sdxl.safetensors"
ADAPTER_FILE = "e2e-tiny-sdxl-base.safetensors"
FULL_ADAPTER_FILE = "e2e-sdxl-base.safetensors"
TOKENIZER_DIR = "e2e-tiny-sdxl-clip-l"
ENV = "WEBUI_E2E_SDXL"
SDXL_CONTEXT = 2048
#: override_settings that keep an SDXL generation from loading (offline: downloading) the approx preview model
NO_APPROX_PREVIEW = {"live_previews_enable": False, "show_progress_type": "Approx cheap"}
SDXL_ATTN2_LAYERS = 70


@dataclass
class SdxlFiles:
    """The SDXL checkpoint and adapter of the session (file names as the server lists them)."""

    checkpoint: str = CHECKPOINT_FILE
    adapter: str = ADAPTER_FILE
    full_size: bool = False  # a full-size SDXL (loading it needs memory), not the tiny one


# ------------------------------------------------------------------------------------------- when


def is_forge(root: Path) -> bool:
    return (root / "modules_forge").is_dir() or (root / "backend" / "loader.py").is_file()


def wanted(root: Path) -> tuple[str, str]:
    """(``"tiny"``, ``"full"`` or ``""`` for none, why none) from ``WEBUI_E2E_SDXL`` and the install."""
    value = os.environ.get(ENV, "").strip()
    if value == "0":
        return "", f"{ENV}=0"
    if value == "1":
        return "tiny", ""
    if value:
        raise ValueError(f"{ENV}={value!r}: use 1 (write the tiny SDXL), 0 (don't) or leave it unset (auto)")
    if not is_forge(root):
        return "tiny", ""
    if find_full_sdxl(root) is None:
        named = os.environ.get("WEBUI_SDXL_CKPT")
        where = root / "models" / "Stable-diffusion"
        return "", (
            "a Forge-family WebUI cannot load the tiny SDXL (its loader takes SDXL's sizes from bundled configs), "
            + (f"and WEBUI_SDXL_CKPT={named} is no SDXL-shaped file in {where}" if named else
               f"and {where} holds no full-size SDXL checkpoint (random weights do; see tests/e2e/sdxl.py)")
        )  # fmt: skip
    return "full", ""


def is_sdxl_shaped(path: Path) -> bool:
    """SDXL's 70 cross-attention layers over a 2048-wide context, read from the file's header."""
    from .webui import checkpoint_attn2

    try:
        ctx, widths = checkpoint_attn2(path)
    except (ValueError, OSError, RuntimeError):
        return False
    return ctx == SDXL_CONTEXT and len(widths) == SDXL_ATTN2_LAYERS


def find_full_sdxl(root: Path) -> Path | None:
    """``WEBUI_SDXL_CKPT`` (a file name in ``models/Stable-diffusion``) when SDXL-shaped, else the
    first SDXL-shaped ``.safetensors`` there, in name order."""
    folder = root / "models" / "Stable-diffusion"
    named = os.environ.get("WEBUI_SDXL_CKPT")
    candidates = [folder / named] if named else sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return next((c for c in candidates if c.is_file() and is_sdxl_shaped(c)), None)


def write_full_sdxl_adapter(root: Path, created: list[Path], seed: int = 0) -> SdxlFiles:
    """A random "base" adapter sized to the full-size SDXL :func:`find_full_sdxl` finds (fed by the
    session's tiny CLIP encoder, 40-wide image embeds); the checkpoint itself is the install's."""
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.factories import adapter_shapes, adapter_tensors

    from .webui import checkpoint_attn2, new_dirs

    checkpoint = find_full_sdxl(root)
    assert checkpoint is not None
    ctx, widths = checkpoint_attn2(checkpoint)
    folder = root / "models" / "ipadapter"
    created.extend(new_dirs(folder))
    adapter = folder / FULL_ADAPTER_FILE
    tmp = adapter.with_name(adapter.name + ".part.safetensors")
    save_adapter_tensors(adapter_tensors(adapter_shapes("base", ctx, widths, 40, tokens=4), seed=seed + 1), tmp)
    os.replace(tmp, adapter)
    created.append(adapter)
    return SdxlFiles(checkpoint.name, FULL_ADAPTER_FILE, full_size=True)


# ---------------------------------------------------------------------------------------- writing


def find_open_clip(python: str) -> Path:
    """The ``open_clip`` package folder of the WebUI's interpreter (located, not imported)."""
    code = "import importlib.util as u; s = u.find_spec('open_clip'); print(s.origin if s else '')"
    try:
        found = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot ask {python} where open_clip is: {exc}") from exc
    origin = found.stdout.strip()
    if not origin:
        raise RuntimeError(f"{python} has no open_clip package (A1111 needs open-clip-torch for SDXL)")
    return Path(origin).parent


def write_tiny_sdxl(root: Path, python: str, created: list[Path], spec: Spec = SPEC, seed: int = 0) -> SdxlFiles:
    """Write the tiny SDXL, its configs and its adapter (see the module docstring) into the install
    at ``root`` whose interpreter is ``python``. Each path is appended to ``created`` as soon as it
    exists (folders before their files), so a failure half-way still leaves it listed."""
    from safetensors.torch import save_file

    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.factories import adapter_shapes, adapter_tensors

    from .webui import checkpoint_attn2

    def new_dir(path: Path) -> Path:
        if not path.is_dir():
            path.mkdir(parents=True)
            created.append(path)
        return path

    def atomically(path: Path, write) -> Path:
        tmp = path.with_name(path.name + ".part" + path.suffix)
        write(tmp)
        os.replace(tmp, path)
        created.append(path)
        return path

    open_clip_dir = find_open_clip(python)
    arch_file = open_clip_dir / "model_configs" / f"{OPEN_CLIP_ARCH}.json"
    created.append(write_text(arch_file, json.dumps(open_clip_config(spec), indent=2)))

    clip_l_dir = new_dir(root / "models" / TOKENIZER_DIR)
    created.extend(write_tokenizer(clip_l_dir, open_clip_dir / "bpe_simple_vocab_16e6.txt.gz"))
    created.append(write_text(clip_l_dir / "config.json", json.dumps(clip_l_config(spec), indent=2)))

    sd_dir = new_dir(root / "models" / "Stable-diffusion")
    checkpoint = sd_dir / CHECKPOINT_FILE
    yaml_text = json.dumps(sdxl_config(spec, clip_l_dir.resolve()), indent=2)  # JSON is YAML
    created.append(write_text(checkpoint.with_suffix(".yaml"), yaml_text))
    state = random_state_dict(checkpoint_shapes(spec), seed)
    atomically(checkpoint, lambda tmp: save_file(state, str(tmp)))

    ctx, widths = checkpoint_attn2(checkpoint)
    if (ctx, len(widths)) != (spec.context_dim, 70):
        raise AssertionError(f"{checkpoint.name}: context {ctx} and {len(widths)} attn2 layers; expected SDXL's 70")
    adapter = new_dir(root / "models" / "ipadapter") / ADAPTER_FILE
    tensors = adapter_tensors(adapter_shapes("base", ctx, widths, 40, tokens=4), seed=seed + 1)
    atomically(adapter, lambda tmp: save_adapter_tensors(tensors, tmp))
    return SdxlFiles()
