"""SigLIP vision encoders (``google/siglip-so400m-patch14-384``) from one ``.safetensors`` file.

InstantX's Flux IP-Adapter reads SigLIP's pooled output (its attention-pooling head), Flux Redux
its last hidden state (729 patch tokens after the final LayerNorm). Users download one
``model.safetensors`` (the full SigLIP, text tower included, or a vision-only export such as
ComfyUI's ``sigclip_vision_patch14_384.safetensors``) without its ``config.json``; the vision
config is read from the tensor shapes, as for the CLIP encoders, and transformers'
``SiglipVisionModel`` is built directly. It exists from transformers 4.37 (Forge pins 4.46.1;
A1111's 4.30.2 has none, and A1111 has no Flux either): an older transformers is an error in words.

SigLIP's preprocessing is not CLIP's: a bicubic resize to the square input (no centre crop,
the ``squash`` crop mode) and mean = std = 0.5 (:data:`~.preprocess.SIGLIP_MEAN`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import EncoderError, ModelFileError
from ..load.formats import Shape, read_flat_tensors
from ..project.projections import EncodedImages
from .preprocess import SIGLIP_MEAN, SIGLIP_STD

MIN_TRANSFORMERS = (4, 37)
_PREFIX = "vision_model."
_LAYER = re.compile(r"^(?:vision_model\.)?encoder\.layers\.(\d+)\.")
#: Head counts of the published SigLIP vision towers by width; anything else gets width/64.
_KNOWN_HEADS = {1152: 16}
#: (width, layers) → the published names.
_KNOWN = {(1152, 27): "so400m", (768, 12): "base", (1024, 24): "large"}
#: (patch, grid) → input size where the grid does not tile it exactly: so400m-patch14-384 takes
#: 384 px, and its stride-14 patch embedding leaves the last 6 px out (27 × 14 = 378).
_INPUT_SIZE = {(14, 27): 384}


@dataclass(frozen=True)
class SiglipVisionSpec:
    """A SigLIP vision tower's architecture, read from tensor shapes."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_channels: int
    pooled: bool  # has the attention-pooling head (the pooled output InstantX reads)
    family: str = "siglip"
    projection_dim: int | None = None  # no visual projection: listed like CLIP's for the API

    @property
    def name(self) -> str | None:
        return _KNOWN.get((self.hidden_size, self.num_layers))

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def describe(self) -> str:
        name = f"SigLIP {self.name}" if self.name else f"SigLIP vision ({self.hidden_size} wide)"
        pooled = f"pooled {self.hidden_size}" if self.pooled else "no pooling head"
        return f"{name} · {self.num_layers} layers · {self.image_size} px · {self.num_tokens} tokens · {pooled}"


def is_siglip(shapes: Mapping[str, Shape]) -> bool:
    """SigLIP's patch embedding without CLIP's class embedding."""
    keys = set(shapes)
    has_patch = any(
        k in keys for k in (f"{_PREFIX}embeddings.patch_embedding.weight", "embeddings.patch_embedding.weight")
    )
    has_class = any(k.endswith("embeddings.class_embedding") for k in keys)
    return has_patch and not has_class


def infer_siglip_spec(shapes: Mapping[str, Shape], filename: str = "encoder") -> SiglipVisionSpec:
    """Read the architecture from ``vision_model.*`` (or unprefixed) shapes."""
    prefix = _PREFIX if f"{_PREFIX}embeddings.patch_embedding.weight" in shapes else ""
    try:
        patch = shapes[f"{prefix}embeddings.patch_embedding.weight"]
        positions, hidden = shapes[f"{prefix}embeddings.position_embedding.weight"]
        intermediate = shapes[f"{prefix}encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        raise ModelFileError(f"{filename}: not a SigLIP vision encoder (missing {exc}).") from exc
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ModelFileError(f"{filename}: {positions} position embeddings is not a square grid of patches.")
    layers = len({m.group(1) for k in shapes if (m := _LAYER.match(k))})
    return SiglipVisionSpec(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=_KNOWN_HEADS.get(hidden, max(1, hidden // 64)),
        intermediate_size=intermediate,
        patch_size=patch[-1],
        image_size=_INPUT_SIZE.get((patch[-1], grid), grid * patch[-1]),
        num_channels=patch[1],
        pooled=f"{prefix}head.probe" in shapes,
    )


def _transformers_siglip():
    """``(SiglipVisionConfig, SiglipVisionModel)``, or :class:`EncoderError` naming the version."""
    import transformers

    try:
        from transformers import SiglipVisionConfig, SiglipVisionModel
    except ImportError as exc:
        raise EncoderError(
            f"SigLIP encoders need transformers {MIN_TRANSFORMERS[0]}.{MIN_TRANSFORMERS[1]} or newer; this WebUI has "
            f"{transformers.__version__}. Forge ships 4.46.1; update transformers in the WebUI's venv, or use a "
            "Forge install (SigLIP adapters are for Flux, which only Forge runs)."
        ) from exc
    return SiglipVisionConfig, SiglipVisionModel


def build_siglip_model(spec: SiglipVisionSpec, state: Mapping[str, torch.Tensor], filename: str = "encoder"):
    """``SiglipVisionModel`` holding the file's vision tensors, built on the meta device (no time
    spent initialising ~400M parameters that are overwritten at once)."""
    config_cls, model_cls = _transformers_siglip()
    config = config_cls(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_channels=spec.num_channels,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=spec.pooled,
    )
    with torch.device("meta"):
        model = model_cls(config)
    own = next(iter(model.state_dict()))
    model_prefix = _PREFIX if own.startswith(_PREFIX) else ""  # transformers 4.x nests vision_model, 5.x not
    file_prefix = _PREFIX if any(k.startswith(_PREFIX) for k in state) else ""
    wanted = {}
    for key, value in state.items():
        if file_prefix and not key.startswith(file_prefix):
            continue  # the text tower and the logit scale/bias of a full SigLIP file
        rest = key[len(file_prefix) :]
        if rest.endswith("position_ids") or rest.startswith("text_model.") or rest.startswith("logit_"):
            continue
        wanted[model_prefix + rest] = value
    result = model.load_state_dict(wanted, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ModelFileError(
            f"{filename}: the SigLIP tensors do not fit the inferred architecture (missing {missing[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}). The file is damaged or unsupported."
        )
    embeddings = (model.vision_model if model_prefix else model).embeddings
    ids = torch.arange(embeddings.num_positions).unsqueeze(0)
    embeddings.register_buffer("position_ids", ids, persistent=False)
    return model.eval().requires_grad_(False)


class SiglipVisionEncoder:
    """A loaded SigLIP vision tower: pooled output and last hidden state per image."""

    mean, std = SIGLIP_MEAN, SIGLIP_STD

    def __init__(self, model, spec: SiglipVisionSpec, name: str = "encoder", identity: str | None = None) -> None:
        self.model = model
        self.spec = spec
        self.name = name
        #: Distinguishes encoders in embedding-cache keys; the file path, size and mtime when loaded from disk.
        self.identity = identity or f"{name}@{id(model):x}"
        self._black: EncodedImages | None = None
        #: Where :meth:`encode` runs (the model moves there on first use); ``None``: where it is.
        self.run_on: torch.device | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> SiglipVisionEncoder:
        path = Path(path)
        state = read_flat_tensors(path)
        spec = infer_siglip_spec({k: tuple(v.shape) for k, v in state.items()}, path.name)
        model = build_siglip_model(spec, state, path.name).to(device=device, dtype=dtype)
        stat = path.stat()
        return cls(model, spec, path.stem, identity=f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str) -> SiglipVisionEncoder:
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        """[N, 3, S, S] normalised pixels → the pooled output (``image_embeds``, when the file has
        the head) and the last hidden state."""
        expected = (self.spec.num_channels, self.spec.image_size, self.spec.image_size)
        if tuple(pixels.shape[1:]) != expected:
            raise EncoderError(
                f"encoder '{self.name}' takes pixels of shape {expected}, got {tuple(pixels.shape[1:])}."
            )
        if self.run_on is not None and self.device != torch.device(self.run_on):
            self.model.to(self.run_on)
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        return EncodedImages(image_embeds=out.pooler_output, last_hidden=out.last_hidden_state)

    def black_image_embeds(self) -> torch.Tensor:
        """[1, D] pooled output of an all-black picture (pixels 0, normalised to −1): the negative
        of InstantX units under true CFG, as for XLabs' adapters; computed once."""
        if self._black is None or self._black.image_embeds is None or self._black.image_embeds.device != self.device:
            s = self.spec
            pixels = torch.full((1, s.num_channels, s.image_size, s.image_size), -1.0)
            self._black = self.encode(pixels)
        if self._black.image_embeds is None:
            raise EncoderError(f"encoder '{self.name}' has no pooling head, so it gives no pooled output.")
        return self._black.image_embeds

    def info(self) -> dict:
        return {"name": self.name, **asdict(self.spec), "description": self.spec.describe()}
