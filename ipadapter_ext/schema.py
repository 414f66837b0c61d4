"""The IP-Adapter unit: one definition of fields, types, ranges and defaults.

The UI builds its components from these defaults, the script parses its arguments into this
model, and the API and infotext (later) read and write the same model. Works with pydantic 1.x
(A1111) and 2.x (Forge).
"""

from __future__ import annotations

from typing import Any

import pydantic
import torch
from PIL import Image
from pydantic import BaseModel, Field

from .core.attend.attention import WeightMode
from .core.attend.weights import BOOST_RANGE, COMPOSITION_BOOST_DEFAULT, STYLE_BOOST_DEFAULT, WeightType
from .core.encode.combine import CombineMode
from .core.encode.embeds import unpack_embeds
from .core.encode.noise import MAX_BLUR, NoiseType
from .core.encode.preprocess import CropMode
from .core.engine import AUTO, UnitRequest
from .core.errors import IPAdapterError
from .unit_inputs import MAX_IMAGE_PIXELS, as_image, decode_image, decode_mask, number_list

PYDANTIC_V2 = pydantic.VERSION.startswith("2")
WEIGHT_RANGE = (-1.0, 3.0)
#: FaceID's embedded LoRA: ComfyUI_IPAdapter_plus's FaceID loader default and range.
LORA_STRENGTH_DEFAULT, LORA_STRENGTH_RANGE = 0.6, (0.0, 1.0)
#: The number-list fields, parsed from lists or "1, 0.5" text (UI text boxes, infotext).
NUMBER_LISTS = ("layer_weights", "image_weights")

__all__ = ["DEFAULTS", "MAX_IMAGE_PIXELS", "IPAdapterUnit", "decode_image", "given_fields", "with_default_weight"]

if PYDANTIC_V2:

    def _before(*names: str) -> Any:
        return pydantic.field_validator(*names, mode="before")

else:

    def _before(*names: str) -> Any:
        return pydantic.validator(*names, pre=True, allow_reuse=True)


class IPAdapterUnit(BaseModel):
    """One unit. ``image`` holds one reference or a list (PIL images, arrays, or base64 strings)."""

    enabled: bool = True
    image: Any = None
    model: str = ""
    encoder: str = AUTO
    weight: float = Field(1.0, ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1])
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(1.0, ge=0.0, le=1.0)
    crop: CropMode = CropMode.CENTER
    embeds: str | None = None  # base64 safetensors from /ipadapter/v1/encode, instead of image
    weight_type: WeightType = WeightType.LINEAR
    composition_weight: float = Field(1.0, ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1])
    weight_mode: WeightMode = WeightMode.V_ONLY
    layer_weights: list[float] | None = None  # 16 (SD1.x) or 11 (SDXL) factors replacing the preset
    combine: CombineMode = CombineMode.CONCAT
    image_weights: list[float] | None = None  # one per reference image
    negative_image: Any = None  # base64 image encoded as the uncond tokens instead of zeros
    noise: float = Field(0.0, ge=0.0, le=1.0)
    mask: Any = None  # base64 image; white is where the unit acts
    #: Show where the units act: an attention map per enabled unit after the generated images. A
    #: request-wide switch (the UI's toggle): any unit asking for it gives every unit its map.
    attention_map: bool = False
    #: img2img: the input image is the reference (with several init images, each one for the
    #: image generated from it), instead of ``image``.
    image_from_init: bool = False
    #: Inpainting: the unit acts where the WebUI inpaints (its inpaint mask), instead of ``mask``.
    mask_from_inpaint: bool = False
    #: The unit acts outside its mask (drawn, or the inpaint mask) instead of inside.
    mask_invert: bool = False
    #: FaceID, FaceID-Plus and Plus v2: strength of the LoRA the adapter file carries, applied to
    #: the UNet's attention layers for this generation only (0: not applied).
    lora_strength: float = Field(LORA_STRENGTH_DEFAULT, ge=LORA_STRENGTH_RANGE[0], le=LORA_STRENGTH_RANGE[1])
    #: FaceID-Plus v2: the scale of the face tokens added back after the perceiver (ComfyUI's
    #: ``weight_faceidv2``).
    faceid_v2_weight: float = Field(1.0, ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1])
    #: Return each reference's detected face (box and aligned crop) after the generated images. A
    #: request-wide switch, like ``attention_map``.
    show_faces: bool = False
    #: The precise weight types' negative layers: "precise style transfer" (the layout layers) and
    #: "composition precise" (every other layer). Defaults as ComfyUI_IPAdapter_plus's nodes.
    style_boost: float = Field(STYLE_BOOST_DEFAULT, ge=BOOST_RANGE[0], le=BOOST_RANGE[1])
    composition_boost: float = Field(COMPOSITION_BOOST_DEFAULT, ge=BOOST_RANGE[0], le=BOOST_RANGE[1])
    #: Contrast-adaptive sharpening of the references (after the crop, before encoding).
    sharpening: float = Field(0.0, ge=0.0, le=1.0)
    #: Base64 mask over the reference image (stretched to it): only the white part is encoded; the
    #: rest is blanked. Not the output-region ``mask``.
    reference_mask: Any = None
    #: How the uncond image is degraded (with ``noise`` as the strength): ComfyUI's noise types, or
    #: "noise", this extension's original blend with a fixed seed.
    noise_type: NoiseType = NoiseType.NOISE
    noise_blur: int = Field(0, ge=0, le=MAX_BLUR)  # Gaussian blur of the uncond image, in pixels
    #: Base64 image whose tokens replace the reference's on the composition (layout) block only.
    composition_image: Any = None
    #: ``image`` is a list with one reference per image of the batch, in order.
    per_batch_image: bool = False

    @_before(*NUMBER_LISTS)
    def _numbers(cls, value: Any) -> list[float] | None:
        return number_list(value, WEIGHT_RANGE[0], WEIGHT_RANGE[1])

    @_before("weight_type", "weight_mode", "combine", "crop", "noise_type")
    def _choice(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    if PYDANTIC_V2:
        model_config = {"extra": "forbid", "arbitrary_types_allowed": True}
    else:

        class Config:
            extra = "forbid"
            arbitrary_types_allowed = True

    def images(self, number: int = 1) -> list:
        """The references as images; base64 strings (the API's form) are decoded here."""
        if self.image is None:
            return []
        items = self.image if isinstance(self.image, list | tuple) else [self.image]
        where = f"IP-Adapter unit {number}, image"
        return [as_image(im, where) for im in items if im is not None]

    def to_request(self, number: int) -> UnitRequest:
        if self.start > self.end:
            raise IPAdapterError(f"IP-Adapter unit {number}: start ({self.start}) is after end ({self.end}).")
        where = f"IP-Adapter unit {number}"
        mask = decode_mask(self.mask, f"{where}, mask")
        self._check_sources(where, mask is not None)
        images = [] if self.image_from_init else self.images(number)
        reference_mask = self._reference_mask(where)
        if mask is not None and self.mask_invert:
            mask = 1.0 - mask
        if self.image_weights is not None and len(self.image_weights) != len(images) and not self.embeds:
            raise IPAdapterError(
                f"{where}: image_weights has {len(self.image_weights)} numbers for {len(images)} reference "
                "image(s); give one weight per image."
            )
        return UnitRequest(
            number=number,
            images=images,
            model=self.model,
            encoder=self.encoder or AUTO,
            weight=self.weight,
            start=self.start,
            end=self.end,
            crop=self.crop.value,
            mode=self.weight_mode,
            embeds=unpack_embeds(self.embeds, f"{where}, embeds") if self.embeds else None,
            weight_type=self.weight_type,
            composition_weight=self.composition_weight,
            layer_weights=tuple(self.layer_weights) if self.layer_weights is not None else None,
            combine=self.combine,
            image_weights=tuple(self.image_weights) if self.image_weights is not None else None,
            negative_images=[]
            if self.negative_image is None
            else [as_image(self.negative_image, f"{where}, negative_image")],
            noise=self.noise,
            mask=mask,
            attention_map=self.attention_map,
            image_from_init=self.image_from_init,
            mask_from_inpaint=self.mask_from_inpaint,
            mask_invert=self.mask_invert,
            lora_strength=self.lora_strength,
            faceid_v2_weight=self.faceid_v2_weight,
            show_faces=self.show_faces,
            style_boost=self._style_boost(),
            composition_boost=self.composition_boost,
            sharpening=self.sharpening,
            reference_mask=reference_mask,
            noise_type=self.noise_type,
            noise_blur=self.noise_blur,
            composition_images=[]
            if self.composition_image is None or self.composition_image == ""
            else [as_image(self.composition_image, f"{where}, composition_image")],
            per_image=self.per_batch_image,
        )

    def _style_boost(self) -> float:
        """Before style_boost existed, "precise style transfer" took its negative layers' weight from
        composition_weight; a request that gives only that keeps meaning what it meant."""
        given = given_fields(self)
        if (
            self.weight_type is WeightType.PRECISE_STYLE
            and "style_boost" not in given
            and "composition_weight" in given
        ):
            return self.composition_weight
        return self.style_boost

    def _reference_mask(self, where: str) -> Image.Image | None:
        """The reference mask as mode "L", or ``None`` when absent or all white (which keeps
        everything: exactly no mask). All black would blank the whole reference: refused."""
        values = decode_mask(self.reference_mask, f"{where}, reference_mask")
        if values is None or bool((values >= 1.0).all()):
            return None
        if float(values.max()) <= 0:
            raise IPAdapterError(
                f"{where}: the reference mask is black everywhere, so nothing of the reference would be used. Paint "
                "white over the part of the reference to use, or remove the reference mask."
            )
        return Image.fromarray((values * 255).round().to(torch.uint8).numpy())

    def _check_sources(self, where: str, has_mask: bool) -> None:
        """Contradictory sources are refused rather than one silently winning."""
        if self.image_from_init and self.embeds:
            raise IPAdapterError(f"{where}: image_from_init and embeds both give the reference; send one of them.")
        if self.image_from_init and self.image_weights is not None:
            raise IPAdapterError(
                f"{where}: image_weights cannot apply with image_from_init (each init image is the reference of "
                "its own generated image); remove image_weights."
            )
        if self.mask_from_inpaint and has_mask:
            raise IPAdapterError(
                f"{where}: both a mask and mask_from_inpaint are given; clear the unit's mask or untick "
                "'use the inpaint mask'."
            )
        if self.per_batch_image and self.image_from_init:
            raise IPAdapterError(
                f"{where}: per_batch_image and image_from_init both give each batch image its own reference; "
                "send one of them."
            )
        if self.mask_invert and not self.mask_from_inpaint and not has_mask:
            raise IPAdapterError(
                f"{where}: 'invert mask' is on but the unit has no mask; draw one, use the inpaint mask, or untick it."
            )


DEFAULTS = IPAdapterUnit()


def given_fields(unit: IPAdapterUnit) -> set[str]:
    """The fields the caller set explicitly (the rest took their defaults)."""
    return set(unit.model_fields_set if PYDANTIC_V2 else unit.__fields_set__)


def with_default_weight(unit: IPAdapterUnit, weight: float) -> IPAdapterUnit:
    """``unit`` with the configured default weight where the caller gave none."""
    if "weight" in given_fields(unit) or weight == unit.weight:
        return unit
    update = {"weight": weight}
    return unit.model_copy(update=update) if PYDANTIC_V2 else unit.copy(update=update)
