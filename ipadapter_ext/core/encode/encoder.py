"""CLIP vision encoders from a single ``.safetensors`` file, with no hub access.

Users download one file (``clip_vision_h.safetensors``, ``model.safetensors`` …) without its
``config.json``. The config is fully determined by the tensor shapes, so it is inferred here and
transformers' ``CLIPVisionModelWithProjection`` is built directly; nothing is fetched. This works
with transformers 4.30.2 (A1111's pin) and current releases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import EncoderError, ModelFileError
from ..load.adapter_info import KNOWN_HIDDEN
from ..load.formats import Shape, guess_content, read_flat_tensors, read_shapes
from ..project.projections import EncodedImages
from .preprocess import CLIP_MEAN, CLIP_STD
from .siglip import SiglipVisionEncoder, SiglipVisionSpec, infer_siglip_spec, is_siglip

_VISION = "vision_model."
_PROJECTION = "visual_projection.weight"
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
#: Head counts of the published encoders; anything else gets hidden/64.
_KNOWN_HEADS = {1280: 16, 1664: 16, 1024: 16}


@dataclass(frozen=True)
class ClipVisionSpec:
    """The encoder's architecture, read from tensor shapes."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    patch_size: int
    image_size: int
    num_channels: int
    projection_dim: int | None  # None when the file has no visual_projection
    hidden_act: str
    family: str = "clip"

    @property
    def name(self) -> str | None:
        return KNOWN_HIDDEN.get(self.hidden_size)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def describe(self) -> str:
        name = f"CLIP {self.name}" if self.name else f"CLIP vision ({self.hidden_size} wide)"
        proj = f"image embeds {self.projection_dim}" if self.projection_dim else "no projection"
        return f"{name} · {self.num_layers} layers · {self.image_size} px · {proj}"


def infer_clip_spec(shapes: Mapping[str, Shape], filename: str = "encoder") -> ClipVisionSpec:
    """Read the architecture from ``vision_model.*`` shapes."""
    try:
        hidden = shapes[f"{_VISION}embeddings.class_embedding"][0]
        patch = shapes[f"{_VISION}embeddings.patch_embedding.weight"]
        positions = shapes[f"{_VISION}embeddings.position_embedding.weight"][0]
        intermediate = shapes[f"{_VISION}encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as exc:
        if any(k.startswith("visual.") for k in shapes):
            raise ModelFileError(
                f"{filename}: this is an OpenCLIP-format vision model. Use the transformers-format "
                "file (keys 'vision_model.*'), e.g. IP-Adapter's image_encoder/model.safetensors."
            ) from exc
        raise ModelFileError(
            f"{filename}: not a CLIP vision encoder (missing {exc}); it looks like {guess_content(list(shapes))}."
        ) from exc
    layers = len({m.group(1) for k in shapes if (m := _LAYER.match(k))})
    patch_size = patch[-1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelFileError(f"{filename}: {positions} position embeddings is not a square grid plus CLS.")
    projection = shapes.get(_PROJECTION)
    # OpenAI's ViT-L/14 (224 and 336 px) is the one published encoder trained with quick_gelu.
    openai_l = hidden == 1024 and layers == 24 and patch_size == 14
    return ClipVisionSpec(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=_KNOWN_HEADS.get(hidden, max(1, hidden // 64)),
        intermediate_size=intermediate,
        patch_size=patch_size,
        image_size=grid * patch_size,
        num_channels=patch[1],
        projection_dim=projection[0] if projection else None,
        hidden_act="quick_gelu" if openai_l else "gelu",
    )


def _hf_config(spec: ClipVisionSpec):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        projection_dim=spec.projection_dim or spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_channels=spec.num_channels,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        hidden_act=spec.hidden_act,
    )


def build_clip_model(spec: ClipVisionSpec, state: Mapping[str, torch.Tensor], filename: str = "encoder"):
    """``CLIPVisionModelWithProjection`` holding ``state``; built on the meta device so that no
    time is spent initialising ~600M parameters that are overwritten at once."""
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(_hf_config(spec))
    wanted = {k: v for k, v in state.items() if k.startswith(_VISION) or k == _PROJECTION}
    wanted.pop(f"{_VISION}embeddings.position_ids", None)
    result = model.load_state_dict(wanted, strict=False, assign=True)
    missing = [
        k for k in result.missing_keys if not k.endswith("position_ids") and not k.startswith("visual_projection")
    ]
    if missing or result.unexpected_keys:
        raise ModelFileError(
            f"{filename}: the encoder's tensors do not fit the inferred architecture "
            f"(missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}). The file is damaged or unsupported."
        )
    embeddings = model.vision_model.embeddings
    ids = torch.arange(embeddings.num_positions).unsqueeze(0)
    embeddings.register_buffer("position_ids", ids, persistent=False)
    if spec.projection_dim is None:
        model.visual_projection = torch.nn.Identity()
    return model.eval().requires_grad_(False)


class ClipVisionEncoder:
    """A loaded encoder plus what is derived from it once: its spec and its uncond hidden states."""

    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, model, spec: ClipVisionSpec, name: str = "encoder", identity: str | None = None) -> None:
        self.model = model
        self.spec = spec
        self.name = name
        #: Distinguishes encoders in embedding-cache keys; the file path, size and mtime when loaded from disk.
        self.identity = identity or f"{name}@{id(model):x}"
        self._uncond_hidden: torch.Tensor | None = None
        self._black_embeds: torch.Tensor | None = None
        #: Where :meth:`encode` runs (the model moves there on first use); ``None``: where it is.
        self.run_on: torch.device | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> ClipVisionEncoder:
        path = Path(path)
        state = read_flat_tensors(path)
        spec = infer_clip_spec({k: tuple(v.shape) for k, v in state.items()}, path.name)
        model = build_clip_model(spec, state, path.name).to(device=device, dtype=dtype)
        stat = path.stat()
        return cls(model, spec, path.stem, identity=f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str) -> ClipVisionEncoder:
        """Move the weights, e.g. back to the CPU after encoding under --medvram/--lowvram."""
        self.model.to(device)
        return self

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> EncodedImages:
        """[N, 3, S, S] normalised pixels → ``image_embeds`` and penultimate hidden states."""
        expected = (self.spec.num_channels, self.spec.image_size, self.spec.image_size)
        if tuple(pixels.shape[1:]) != expected:
            raise EncoderError(
                f"encoder '{self.name}' takes pixels of shape {expected}, got {tuple(pixels.shape[1:])}."
            )
        if self.run_on is not None and self.device != torch.device(self.run_on):
            self.model.to(self.run_on)
        out = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        embeds = self.model.visual_projection(out.pooler_output) if self.spec.projection_dim else None
        return EncodedImages(image_embeds=embeds, hidden=out.hidden_states[-2])

    def uncond_hidden(self) -> torch.Tensor:
        """Penultimate hidden states of an all-zero *normalised* input (mid-grey), as the original
        repository builds the negative for plus and full-face adapters; computed once."""
        if self._uncond_hidden is None:  # kept on the CPU: needing it must not move the encoder
            s = self.spec
            zeros = torch.zeros(1, s.num_channels, s.image_size, s.image_size)
            hidden = self.encode(zeros).hidden
            assert hidden is not None
            self._uncond_hidden = hidden.cpu()
        return self._uncond_hidden

    def black_image_embeds(self) -> torch.Tensor:
        """[1, D] ``image_embeds`` of an all-black picture (pixels 0, normalised to −mean/std), the
        negative XLabs' Flux pipeline and diffusers' Flux pipeline encode; computed once."""
        if self._black_embeds is None:  # kept on the CPU, like the uncond hidden states
            s = self.spec
            mean = torch.tensor(CLIP_MEAN).view(1, -1, 1, 1)
            std = torch.tensor(CLIP_STD).view(1, -1, 1, 1)
            pixels = ((0.0 - mean) / std).expand(1, s.num_channels, s.image_size, s.image_size)
            embeds = self.encode(pixels.contiguous()).image_embeds
            if embeds is None:
                raise EncoderError(f"encoder '{self.name}' has no visual projection, so it gives no image embeds.")
            self._black_embeds = embeds.cpu()
        return self._black_embeds

    def info(self) -> dict:
        return {"name": self.name, **asdict(self.spec), "description": self.spec.describe()}


#: Every encoder kind: CLIP vision (SD adapters, XLabs) and SigLIP (InstantX, Redux).
ImageEncoder = ClipVisionEncoder | SiglipVisionEncoder
EncoderSpec = ClipVisionSpec | SiglipVisionSpec


def infer_encoder_spec(shapes: Mapping[str, Shape], filename: str = "encoder") -> EncoderSpec:
    """CLIP or SigLIP, told apart by the class embedding only CLIP has, then read from shapes."""
    if is_siglip(shapes):
        return infer_siglip_spec(shapes, filename)
    return infer_clip_spec(shapes, filename)


def load_encoder(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ImageEncoder:
    """The encoder in ``path``, whichever kind its tensors say it is."""
    if is_siglip(read_shapes(path)):
        return SiglipVisionEncoder.from_file(path, device, dtype)
    return ClipVisionEncoder.from_file(path, device, dtype)
