"""Checks and conversions of one unit's request that need no loaded encoder: its layer weights,
its region mask, its precomputed embeds, and which image options a unit kind cannot take.

Kept out of the engine (which loads, encodes and projects) so each rule, and the message that
names the fix, reads on its own.
"""

from __future__ import annotations

import torch

from .attend.masks import RegionMask
from .attend.weights import WeightType, transformer_weights
from .errors import IPAdapterError
from .load.adapter import IPAdapterModel
from .load.compat import UNetSignature
from .request import UnitRequest


def refuse_image_craft(req: UnitRequest, why: str) -> None:
    """Tiles, reference masks, sharpening and composition images shape how CLIP sees an image."""
    given = [
        name
        for name, on in (
            ("crop 'tiles'", req.crop == "tiles"),
            ("reference_mask", req.reference_mask is not None),
            ("sharpening", req.sharpening > 0),
            ("composition_image", bool(req.composition_images)),
        )
        if on
    ]
    if given:
        raise IPAdapterError(
            f"{why}, so {', '.join(given)} cannot apply. Remove {'it' if len(given) == 1 else 'them'}."
        )


def embeds_tokens(req: UnitRequest, adapter: IPAdapterModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The (cond, uncond) tokens of ``/encode``'s embeds, refused when they were made for another
    model: tokens of another width or projection would attend as noise."""
    cond, uncond, made_for = req.embeds  # type: ignore[misc]
    if made_for != req.model or cond.shape[-1] != adapter.info.context_dim:
        raise IPAdapterError(
            f"the embeds were made for model '{made_for}' ({cond.shape[-1]}-wide tokens), not '{req.model}'. "
            "Use that model, or encode the image again with this one."
        )
    if req.negative_images or req.noise > 0 or req.noise_blur > 0:
        raise IPAdapterError(
            "embeds already hold their uncond tokens, so negative_image and noise cannot apply. "
            "Send them to /ipadapter/v1/encode with the image instead, or send the image itself."
        )
    return cond, uncond


def layer_weights(req: UnitRequest, unet: UNetSignature):
    """The unit's weight per transformer of this UNet (its weight type, boosts and layer weights);
    only a uniform weight where the layers cannot be mapped (Flux, an unknown UNet)."""
    if unet.arch == "flux" and (req.weight_type != WeightType.LINEAR or req.layer_weights is not None):
        raise IPAdapterError(
            "weight types and layer weights address the SD UNet's blocks, which Flux does not have. "
            "On Flux use the 'linear' weight type without layer_weights (weight, start and end still apply)."
        )
    if not unet.transformer_index:  # a host that cannot map its layers: only a uniform weight
        if req.weight_type != WeightType.LINEAR or req.layer_weights is not None:
            raise IPAdapterError(
                "this UNet's layers could not be mapped to transformer blocks, so only the 'linear' weight "
                "type without layer_weights can be used."
            )
        return transformer_weights(WeightType.LINEAR, req.weight, ("input",) * len(unet.attn2_widths))
    return transformer_weights(
        req.weight_type, req.weight, unet.transformer_blocks, req.composition_weight, req.layer_weights,
        style_boost=req.style_boost, composition_boost=req.composition_boost,
    )  # fmt: skip


def region_mask(req: UnitRequest) -> RegionMask | None:
    """The region the unit acts in; an all-black mask is an error, not a unit that does nothing."""
    if req.mask is None:
        return None
    if float(req.mask.max()) <= 0:
        raise IPAdapterError(
            "the mask is black everywhere, so the unit would do nothing. Paint white where the reference "
            "should act, or remove the mask."
        )
    return RegionMask(req.mask)
