"""Reference image → CLIP pixel values, with crop modes for non-square references.

The ``center`` mode reproduces ``CLIPImageProcessor``'s defaults exactly (shortest edge to the
encoder size with PIL bicubic, centre crop with the same rounding, ×1/255, OpenAI mean/std), so
embeddings match every other IP-Adapter implementation. The other modes exist because a centre
crop silently drops the edges of wide or tall references, the most common surprise users report.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: SigLIP's processor (``SiglipImageProcessor``): mean and std 0.5, no centre crop.
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
#: Pixel colour used for letterboxing: the CLIP mean, which normalises to zero.
PAD_COLOUR = tuple(round(m * 255) for m in CLIP_MEAN)


def pad_colour(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The letterbox colour that normalises to (about) zero for an encoder's ``mean``."""
    return tuple(round(m * 255) for m in mean)


class CropMode(str, Enum):
    CENTER = "center"
    TOP = "top"
    BOTTOM = "bottom"
    LEFT = "left"
    RIGHT = "right"
    PAD = "pad"
    SQUASH = "squash"


# Where the crop window sits along the long side: 0 = start, 0.5 = centre, 1 = end.
# Top/bottom act on tall images, left/right on wide ones; the other axis stays centred.
_ANCHORS = {
    CropMode.CENTER: (0.5, 0.5),
    CropMode.TOP: (0.0, 0.5),
    CropMode.BOTTOM: (1.0, 0.5),
    CropMode.LEFT: (0.5, 0.0),
    CropMode.RIGHT: (0.5, 1.0),
}


def to_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """Accept PIL images or HxW(xC) uint8 arrays; alpha is dropped as CLIP's processor does."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"reference image arrays must be uint8, got {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"a reference image must be a PIL image or a uint8 array, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_shortest(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)  # truncation, as transformers does
    new_size = (size, new_long) if w <= h else (new_long, size)
    return image.resize(new_size, resample=Image.BICUBIC)


def _crop(image: Image.Image, size: int, anchor: tuple[float, float]) -> Image.Image:
    w, h = image.size
    top = (h - size) // 2 if anchor[0] == 0.5 else round((h - size) * anchor[0])
    left = (w - size) // 2 if anchor[1] == 0.5 else round((w - size) * anchor[1])
    return image.crop((left, top, left + size, top + size))


def _pad_square(image: Image.Image, colour: tuple[int, ...] = PAD_COLOUR) -> Image.Image:
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def prepare_image(
    image: Image.Image | np.ndarray,
    size: int = 224,
    crop: CropMode | str = CropMode.CENTER,
    pad: tuple[int, ...] = PAD_COLOUR,
) -> Image.Image:
    """Resize and crop to ``size``×``size`` according to ``crop`` (``pad``: the letterbox colour).
    ``squash`` is exactly SigLIP's own processor (a bicubic resize to the square, no crop)."""
    mode = CropMode(crop)
    image = to_rgb_image(image)
    if mode is CropMode.SQUASH:
        return image.resize((size, size), resample=Image.BICUBIC)
    if mode is CropMode.PAD:
        return _pad_square(image, pad).resize((size, size), resample=Image.BICUBIC)
    return _crop(_resize_shortest(image, size), size, _ANCHORS[mode])


def normalise(
    image: Image.Image, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """RGB image → [3, H, W] float32, with the processor's exact arithmetic order."""
    arr = np.asarray(image, dtype=np.uint8)
    x = (arr * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def pixel_values(
    images: list,
    size: int = 224,
    crop: CropMode | str = CropMode.CENTER,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """A batch of references → [N, 3, size, size] normalised pixel values (CLIP's mean and std
    unless the encoder has its own)."""
    pad = pad_colour(mean)
    return torch.stack([normalise(prepare_image(im, size, crop, pad), mean, std) for im in images])
