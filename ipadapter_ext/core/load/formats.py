"""Reading IP-Adapter checkpoints and CLIP vision files from disk.

Two containers exist in the wild: the original ``.bin`` pickle holding a nested dict
``{"image_proj": {...}, "ip_adapter": {...}}``, and ``.safetensors`` with the same tensors under
flat ``image_proj.`` / ``ip_adapter.`` prefixes (some community files use ``adapter_modules.``
instead of ``ip_adapter.``). Both are normalised to :class:`AdapterTensors`.

XLabs' Flux adapters use their own names: ``ip_adapter_proj_model.*`` for the projection and
``double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.{weight,bias}`` per double block.
They are renamed to the layout diffusers converts them to (``image_proj.*`` and
``ip_adapter.N.to_{k,v}_ip.{weight,bias}``, N counting double blocks from 0), so detection and
loading see one layout for all three spellings. Flux Redux files (``redux_up.*``/``redux_down.*``,
no per-layer part) are read as an ``image_proj`` alone.

Pickles are only ever read by torch's weights-only unpickler: a model file downloaded from the
internet must not be able to run code. It is called as ``torch.serialization.load``, not through
the global ``torch.load``, which hosts replace: A1111's ``modules/safe.py`` swaps in a checker
whose 2023 allow-list refuses the ``.format_version`` and ``.storage_alignment`` entries current
torch writes, and answers ``None`` with a "may be malicious" traceback for a legitimate file.
Our loader is already safe, so it neither needs nor may be broken by that replacement.

Shapes can be read without loading any tensor data (:func:`read_shapes`), which is what model
listing and detection use, so scanning a folder of multi-GB files stays fast: safetensors by
their header, zip-format pickles memory-mapped (only the pages of the pickle itself are read).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelFileError
from . import progress

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

#: Prefixes under which the per-layer K/V projections are stored, first match wins.
ADAPTER_PREFIXES = ("ip_adapter.", "adapter_modules.")
IMAGE_PROJ_PREFIX = "image_proj."
#: XLabs' Flux projection prefix, an alias of ``image_proj.``.
XLABS_PROJ_PREFIX = "ip_adapter_proj_model."
#: Flux Redux's two Linear layers: the whole model is its projection.
REDUX_PREFIXES = ("redux_up.", "redux_down.")
_XLABS_KV = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class AdapterTensors:
    """An adapter checkpoint split into its two parts, with original key names."""

    image_proj: dict[str, torch.Tensor]
    ip_adapter: dict[str, torch.Tensor]

    def shapes(self) -> dict[str, Shape]:
        """Shapes under flat ``image_proj.``/``ip_adapter.`` keys, the input of detection."""
        out = {IMAGE_PROJ_PREFIX + k: tuple(v.shape) for k, v in self.image_proj.items()}
        out.update({"ip_adapter." + k: tuple(v.shape) for k, v in self.ip_adapter.items()})
        return out


def _read_safetensors_shapes(path: Path) -> dict[str, Shape]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    label = progress.current()
    if label is None:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    with progress.reading(path.stat().st_size, label) as update, safe_open(str(path), "pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            out[key] = tensor = f.get_tensor(key)
            update(tensor.numel() * tensor.element_size())
    return out


def _read_zip_pickle_with_progress(path: Path, label: str) -> dict[str, torch.Tensor]:
    """The tensors of a zip-format pickle mapped, then copied into memory one by one (the same
    values a plain read gives), so the copy can report its progress."""
    flat = _flatten(_read_pickle(path, mmap=True))
    with progress.reading(path.stat().st_size, label) as update:
        out = {}
        for key, tensor in flat.items():
            out[key] = tensor.clone()
            update(tensor.numel() * tensor.element_size())
    return out


def _read_pickle(path: Path, mmap: bool = False) -> dict:
    """``mmap`` maps the tensor data instead of reading it (zip-format files, torch ≥ 2.1): the
    tensors are valid, and only the bytes touched are ever read."""
    load = torch.serialization.load  # not torch.load: see the module docstring
    obj = load(str(path), map_location="cpu", weights_only=True, **({"mmap": True} if mmap else {}))
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            f"{path.name}: the file holds a {type(obj).__name__}, not a dictionary of tensors. "
            "It is not an IP-Adapter or CLIP vision model."
        )
    return dict(obj)


def _flatten(obj: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts (the ``.bin`` layout) to flat dotted keys; non-tensors are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
    return out


def _unpickling_reason(exc: Exception) -> str:
    """The informative part of torch's weights-only error, without its advice to disable the check."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    for line in text.splitlines():
        line = line.strip().split(". Please", 1)[0]
        if line.startswith("Unsupported") or "global" in line.lower():
            return line
    return "unsupported content"


def read_flat_tensors(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """All tensors in a model file under flat dotted keys, with errors a user can act on.
    ``mmap``: map a zip-format pickle's tensor data rather than read it (see :func:`read_shapes`)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file.")
    suffix = path.suffix.lower()
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            return _read_safetensors(path)
        if suffix in PICKLE_SUFFIXES:
            is_zip = zipfile.is_zipfile(path)
            label = progress.current()
            if label is not None and is_zip and not mmap:
                return _read_zip_pickle_with_progress(path, label)
            return _flatten(_read_pickle(path, mmap=mmap and is_zip))
    except ModelFileError:
        raise
    except pickle.UnpicklingError as exc:
        reason = _unpickling_reason(exc)
        if "global" in reason.lower():
            raise ModelFileError(
                f"{path.name}: refused to load: the file holds Python objects, not just tensors ({reason}). "
                "Only weights-only files are loaded; use the .safetensors version of this model."
            ) from exc
        raise ModelFileError(
            f"{path.name}: cannot read the file ({reason}). It may be truncated or corrupt: download it again."
        ) from exc
    except Exception as exc:  # torch/zipfile/safetensors each raise their own types
        raise ModelFileError(
            f"{path.name}: cannot read the file ({type(exc).__name__}: {exc}). "
            "It may be truncated or corrupt: download it again."
        ) from exc
    raise ModelFileError(f"{path.name}: unsupported file type '{suffix}'. Use .safetensors (preferred) or .bin.")


def read_shapes(path: str | Path) -> dict[str, Shape]:
    """Key → shape for every tensor, reading only the header where the format allows it."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES and path.is_file():
        try:
            return _read_safetensors_shapes(path)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(
                f"{path.name}: cannot read the safetensors header ({exc}). "
                "The file may be truncated or corrupt: download it again."
            ) from exc
    return {k: tuple(v.shape) for k, v in read_flat_tensors(path, mmap=True).items()}


def guess_content(keys: list[str] | tuple[str, ...] | set[str]) -> str:
    """A phrase naming what a file that is not an IP-Adapter probably is, for error messages."""
    keys = list(keys)
    if not keys:
        return "no tensors at all"
    joined = " ".join(keys[:2000])
    if "model.diffusion_model." in joined:
        return "a Stable Diffusion checkpoint (it goes in models/Stable-diffusion)"
    if "control_model." in joined or "input_hint_block" in joined:
        return "a ControlNet model (it goes in models/ControlNet)"
    if "lora_" in joined or ".lora." in joined or "lora_unet" in joined:
        return "a LoRA (it goes in models/Lora)"
    if "vision_model." in joined or "visual." in joined:
        return "a CLIP vision encoder (it goes in models/clip_vision)"
    if "encoder.down" in joined or "decoder.up" in joined:
        return "a VAE (it goes in models/VAE)"
    sample = ", ".join(sorted(keys)[:3])
    return f"{len(keys)} tensors with unrelated names (e.g. {sample})"


def split_adapter(flat: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Flat keys → (image_proj, ip_adapter) dicts with the prefixes removed (XLabs' Flux names
    renamed to diffusers' layout)."""
    image_proj: dict[str, torch.Tensor] = {}
    ip_adapter: dict[str, torch.Tensor] = {}
    for key, value in flat.items():
        if key.startswith(IMAGE_PROJ_PREFIX):
            image_proj[key[len(IMAGE_PROJ_PREFIX) :]] = value
            continue
        if key.startswith(XLABS_PROJ_PREFIX):
            image_proj[key[len(XLABS_PROJ_PREFIX) :]] = value
            continue
        if key.startswith(REDUX_PREFIXES):
            image_proj[key] = value
            continue
        if m := _XLABS_KV.match(key):
            ip_adapter[f"{m.group(1)}.to_{m.group(2)}_ip.{m.group(3)}"] = value
            continue
        for prefix in ADAPTER_PREFIXES:
            if key.startswith(prefix):
                ip_adapter[key[len(prefix) :]] = value
                break
    return image_proj, ip_adapter


def normalise_shapes(shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """Rename ``adapter_modules.`` (and XLabs') keys to ``image_proj.``/``ip_adapter.`` so
    detection sees one layout."""
    image_proj, ip_adapter = split_adapter(shapes)  # type: ignore[arg-type]
    out = {IMAGE_PROJ_PREFIX + k: v for k, v in image_proj.items()}
    out.update({"ip_adapter." + k: v for k, v in ip_adapter.items()})
    return out


def load_adapter_tensors(path: str | Path) -> AdapterTensors:
    """Read an adapter checkpoint in any supported container."""
    path = Path(path)
    flat = read_flat_tensors(path)
    image_proj, ip_adapter = split_adapter(flat)
    redux = any(k.startswith(REDUX_PREFIXES) for k in image_proj)
    if not image_proj or not (ip_adapter or redux):
        missing = "image_proj" if not image_proj else "ip_adapter"
        raise ModelFileError(
            f"{path.name}: not an IP-Adapter model: it has no '{missing}' tensors; "
            f"it looks like {guess_content(list(flat))}."
        )
    return AdapterTensors(image_proj=image_proj, ip_adapter=ip_adapter)


def save_adapter_tensors(tensors: AdapterTensors, path: str | Path) -> None:
    """Write an adapter in the flat safetensors layout (or the nested ``.bin`` one)."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors.torch import save_file

        flat = {IMAGE_PROJ_PREFIX + k: v.contiguous() for k, v in tensors.image_proj.items()}
        flat.update({"ip_adapter." + k: v.contiguous() for k, v in tensors.ip_adapter.items()})
        save_file(flat, str(path))
    else:
        torch.save({"image_proj": dict(tensors.image_proj), "ip_adapter": dict(tensors.ip_adapter)}, str(path))
