"""What one enabled unit asks for, after the UI/API arguments were parsed (host-free).

Kept apart from the engine so that the modules the engine delegates to (reference tokens) can
read a request without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from .attend.attention import WeightMode
from .attend.context import DownsampleMode, StrengthMode
from .attend.weights import COMPOSITION_BOOST_DEFAULT, STYLE_BOOST_DEFAULT, WeightType
from .encode.combine import CombineMode
from .encode.noise import NoiseType

AUTO = "auto"


@dataclass
class UnitRequest:
    """What one enabled unit asks for, after the UI/API arguments were parsed."""

    number: int
    images: list = field(default_factory=list)
    model: str = ""
    encoder: str = AUTO
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    crop: str = "center"
    mode: WeightMode = WeightMode.V_ONLY
    embeds: tuple[torch.Tensor, torch.Tensor, str] | None = None  # (cond, uncond, model) from /encode
    weight_type: WeightType = WeightType.LINEAR
    composition_weight: float | None = None  # None: the same as ``weight``
    layer_weights: tuple[float, ...] | None = None  # one factor per transformer, replacing the preset
    combine: CombineMode = CombineMode.CONCAT
    image_weights: tuple[float, ...] | None = None
    negative_images: list = field(default_factory=list)  # encoded as the uncond tokens
    noise: float = 0.0  # the strength of the uncond image's noise (the negative, or the references)
    mask: torch.Tensor | None = None  # [H, W] in [0, 1]; white is where the unit acts
    attention_map: bool = False  # record where it acts (a request-wide switch; the host renders it)
    #: img2img sources, resolved by the host from its processing object before ``prepare``.
    image_from_init: bool = False  # the references are the init image(s)
    mask_from_inpaint: bool = False  # the region is the area being inpainted
    mask_invert: bool = False  # (with mask_from_inpaint) the region is the rest of the image
    #: Each image is the reference of one generated image of the batch (row i ↔ images[i]),
    #: instead of all images together being the reference of every generated image.
    per_image: bool = False
    lora_strength: float = 0.6  # FaceID: the embedded LoRA's strength
    faceid_v2_weight: float = 1.0  # FaceID-Plus v2: the shortcut scale
    show_faces: bool = False  # return the detected faces (a request-wide switch; the host renders)
    #: The precise weight types' negative-layer weights.
    style_boost: float = STYLE_BOOST_DEFAULT
    composition_boost: float = COMPOSITION_BOOST_DEFAULT
    sharpening: float = 0.0  # contrast-adaptive sharpening of the references before encoding
    reference_mask: Image.Image | None = None  # mode "L" over the reference: what it excludes is blanked
    noise_type: NoiseType = NoiseType.NOISE
    noise_blur: int = 0  # Gaussian blur of the uncond image, in pixels of the encoder input
    composition_images: list = field(default_factory=list)  # their tokens on the composition block only
    #: The generation's seed of each image of the current batch (the host fills it in): the
    #: noise types draw the uncond image of image i from ``seeds[i]``.
    seeds: tuple[int, ...] = ()
    #: Flux Redux: how ``weight`` (its strength) acts, and the token grid's downsampling.
    redux_strength_mode: StrengthMode = StrengthMode.SCALE
    redux_downsample: int = 1
    redux_downsample_mode: DownsampleMode = DownsampleMode.AREA

    @property
    def seeded_noise(self) -> bool:
        """The uncond image is degraded by a noise type drawn from the generation's seeds."""
        return (self.noise > 0 or self.noise_blur > 0) and NoiseType(self.noise_type) is not NoiseType.NOISE
