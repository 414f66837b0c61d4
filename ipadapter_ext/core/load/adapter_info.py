"""The facts detection establishes about an adapter file, and the tables they come from.

Kept apart from :mod:`.detect` (which reads the tensors): the rest of the package, the UI's model
line and the compatibility checks read these types without the detection logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class ProjectionKind(str, Enum):
    """The projection module family, which fixes the code path."""

    IMAGE = "image"  # ImageProjModel: linear + LayerNorm on image_embeds
    RESAMPLER = "resampler"  # "plus": perceiver resampler over hidden states
    FULL = "full"  # full-face MLP, token-wise over hidden states
    FACEID = "faceid"  # FaceID MLP on a face embedding (LoRA-trained)
    FACEID_PLUS = "faceid_plus"  # FaceID MLP + perceiver over CLIP hidden states
    PORTRAIT = "portrait"  # FaceID MLP without LoRA, several faces concatenated
    MLP = "mlp"  # InstantX Flux: Linear, GELU, Linear to T tokens, LayerNorm, on SigLIP's pooled output
    REDUX = "redux"  # Flux Redux: up, SiLU, down, per SigLIP patch token (context tokens, no attention patch)


class EncoderOutput(str, Enum):
    """Which encoder output feeds the projection."""

    IMAGE_EMBEDS = "image_embeds"  # projected CLS token, one vector per image
    PENULTIMATE = "penultimate"  # hidden_states[-2], no post_layernorm
    FACE = "face"  # insightface embedding only
    FACE_AND_PENULTIMATE = "face+penultimate"  # FaceID-Plus
    LAST_HIDDEN = "last_hidden"  # SigLIP's last hidden state, after its final LayerNorm (Redux)


#: Known CLIP vision encoders by hidden width and by projection width.
KNOWN_HIDDEN = {1280: "ViT-H/14", 1664: "ViT-bigG/14", 1024: "ViT-L/14"}
KNOWN_PROJECTION = {1024: "ViT-H/14", 1280: "ViT-bigG/14", 768: "ViT-L/14"}
#: Known SigLIP vision towers by width (pooled output and hidden states are as wide).
KNOWN_SIGLIP = {1152: "so400m"}
#: Known UNet families by cross-attention context width.
KNOWN_CONTEXT = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}
#: Cross-attention layer counts of the two topologies adapters are published for.
TOPOLOGY_BY_LAYERS = {16: "SD1.5", 70: "SDXL"}
FACE_EMBED_WIDTH = 512

#: Variant name → (display name, projection kind it requires).
VARIANTS: dict[str, tuple[str, ProjectionKind]] = {
    "base": ("IP-Adapter", ProjectionKind.IMAGE),
    "light": ("IP-Adapter Light", ProjectionKind.IMAGE),
    "plus": ("IP-Adapter Plus", ProjectionKind.RESAMPLER),
    "plus-face": ("IP-Adapter Plus Face", ProjectionKind.RESAMPLER),
    "plus-composition": ("IP Composition Adapter (ostris)", ProjectionKind.RESAMPLER),
    "portrait-unnorm": ("IP-Adapter FaceID Portrait (unnorm)", ProjectionKind.RESAMPLER),
    "instantid": ("InstantID (IP part)", ProjectionKind.RESAMPLER),
    "full-face": ("IP-Adapter Full Face", ProjectionKind.FULL),
    "faceid": ("IP-Adapter FaceID", ProjectionKind.FACEID),
    "faceid-plus": ("IP-Adapter FaceID Plus", ProjectionKind.FACEID_PLUS),
    "faceid-plusv2": ("IP-Adapter FaceID Plus v2", ProjectionKind.FACEID_PLUS),
    "portrait": ("IP-Adapter FaceID Portrait", ProjectionKind.PORTRAIT),
    "xlabs-flux": ("XLabs Flux IP-Adapter", ProjectionKind.IMAGE),
    "instantx-flux": ("InstantX Flux IP-Adapter", ProjectionKind.MLP),
    "flux-redux": ("Flux Redux", ProjectionKind.REDUX),
}
#: Variants for the Flux transformer (arch "flux"); every other variant is for SD UNets.
FLUX_VARIANTS = frozenset({"xlabs-flux", "instantx-flux", "flux-redux"})

#: The face analysis pack each face variant was trained on, where it is not the chosen one.
FACE_PACK_BY_VARIANT = {"instantid": "antelopev2"}
_PURPOSES = {
    "plus-composition": "composition adapter: transfers the layout, not the style or content",
}


@dataclass(frozen=True)
class EncoderRequirement:
    """What the projection needs as input, in terms a user can match to a file."""

    output: EncoderOutput
    width: int  # image_embeds width, hidden width, or face embedding width
    clip_hidden: int | None = None  # for FaceID-Plus: width of the CLIP hidden states
    family: str = "clip"  # the image encoder's kind: "clip" or "siglip"

    @property
    def needs_clip(self) -> bool:
        """An image encoder (CLIP or SigLIP) is needed; only FaceID's face embedding is not one."""
        return self.output is not EncoderOutput.FACE

    @property
    def clip_width(self) -> int:
        """The width the CLIP encoder must produce for the output used."""
        return self.clip_hidden if self.clip_hidden is not None else self.width

    @property
    def clip_name(self) -> str | None:
        """Known encoder name (e.g. ``ViT-H/14``, ``SigLIP so400m``) or ``None`` for unknown widths."""
        if self.family == "siglip":
            known = KNOWN_SIGLIP.get(self.width)
            return f"SigLIP {known}" if known else None
        if self.output is EncoderOutput.IMAGE_EMBEDS:
            return KNOWN_PROJECTION.get(self.width)
        if self.output is EncoderOutput.FACE:
            return None
        return KNOWN_HIDDEN.get(self.clip_width)

    def describe(self) -> str:
        if self.output is EncoderOutput.FACE:
            return "a face embedding (insightface)"
        if self.family == "siglip":
            return self.clip_name or f"a SigLIP vision encoder {self.width} wide"
        name = self.clip_name
        if name:
            clip = f"CLIP {name}"
        elif self.output is EncoderOutput.IMAGE_EMBEDS:
            clip = f"a CLIP vision encoder with {self.width}-wide image embeds"
        else:
            clip = f"a CLIP vision encoder with {self.clip_width}-wide hidden states"
        if self.output is EncoderOutput.FACE_AND_PENULTIMATE:
            return f"a face embedding (insightface) + {clip}"
        return clip


@dataclass(frozen=True)
class AdapterInfo:
    """Everything the rest of the extension needs to know about an adapter file."""

    variant: str
    kind: ProjectionKind
    context_dim: int
    layer_widths: tuple[int, ...]  # per cross-attention layer, in checkpoint key order
    tokens: int | None  # per reference image; None = one per encoder token (full-face)
    encoder: EncoderRequirement
    has_lora: bool = False
    params: Mapping[str, int] = field(default_factory=dict)  # projection hyper-parameters
    #: The model family it attaches to: "sd" (UNet cross-attention) or "flux" (double-stream blocks).
    arch: str = "sd"
    #: The variant was told from the file name: its tensors are those of the kind's default variant.
    by_name: bool = False

    @property
    def name(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def num_layers(self) -> int:
        return len(self.layer_widths)

    @property
    def family(self) -> str:
        """'SD1.5', 'SDXL', 'Flux', or a description of an unknown shape."""
        if self.arch == "flux":
            return "Flux"
        known = KNOWN_CONTEXT.get(self.context_dim)
        if known:
            return known
        topo = TOPOLOGY_BY_LAYERS.get(self.num_layers)
        shape = f"{topo}-shaped" if topo else f"{self.num_layers}-layer"
        return f"{shape} (context {self.context_dim})"

    @property
    def shortcut(self) -> bool:
        """FaceID-Plus v2 adds the face tokens back after the perceiver."""
        return self.variant == "faceid-plusv2"

    def tokens_text(self) -> str:
        if self.kind is ProjectionKind.REDUX:
            return "one context token per SigLIP patch"
        if self.tokens is not None:
            return f"{self.tokens} tokens"
        return "one token per encoder patch"

    def describe(self) -> str:
        """E.g. 'IP-Adapter Plus · SD1.5 · 16 tokens · needs CLIP ViT-H/14', or
        'XLabs Flux IP-Adapter · 4 tokens · needs CLIP ViT-L/14' (the name already says Flux)."""
        if self.arch == "flux":
            return f"{self.name} · {self.tokens_text()} · needs {self.encoder.describe()}"
        needs = self.encoder.describe()
        pack = FACE_PACK_BY_VARIANT.get(self.variant)
        if pack:
            needs = needs.replace("(insightface)", f"(insightface's {pack} pack)")
        text = f"{self.name} · {self.family} · {self.tokens_text()} · needs {needs}"
        if self.variant == "instantid":
            text += (
                " · acts fully only with the InstantID IdentityNet ControlNet beside it (ControlNet's two-unit "
                "InstantID set-up); alone it adds the face tokens only"
            )
        if self.purpose:
            text += f" · {self.purpose}"
        if self.by_name:
            text += " · variant told by the file name (its tensors alone fit other variants too)"
        return text

    @property
    def purpose(self) -> str:
        """What the adapter transfers, where its variant says so (for the model line)."""
        return _PURPOSES.get(self.variant, "")
