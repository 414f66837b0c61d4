"""Reference image → CLIP pixel values, with crop modes for non-square references.

The ``center`` mode reproduces ``CLIPImageProcessor``'s defaults exactly (shortest edge to the
encoder size with PIL bicubic, centre crop with the same rounding, ×1/255, OpenAI mean/std), so
embeddings match every other IP-Adapter implementation. The other modes exist because a centre
crop silently drops the edges of wide or tall references, the most common surprise users report;
``tiles`` keeps all of a reference (:mod:`.tiles`). The geometry works on masks too (mode "L"),
so a reference mask is cut exactly as its image.
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
    TILES = "tiles"  # square tiles along the long side, each its own token group (see tiles.py)


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
    canvas = Image.new(image.mode, (side, side), colour if image.mode == "RGB" else 0)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def fit_square(
    image: Image.Image, size: int, crop: CropMode | str = CropMode.CENTER, pad: tuple[int, ...] = PAD_COLOUR
) -> Image.Image:
    """``image`` (RGB, or a mask in mode "L") resized and cropped to ``size``×``size`` by ``crop``
    (one of the single-view modes; ``tiles`` is :func:`.tiles.cut_tiles`); ``pad`` is the
    letterbox colour of RGB images."""
    mode = CropMode(crop)
    if mode is CropMode.TILES:
        raise ValueError("the 'tiles' crop gives several views: use tiles.plan_tiles and tiles.cut_tiles")
    if mode is CropMode.SQUASH:
        return image.resize((size, size), resample=Image.BICUBIC)
    if mode is CropMode.PAD:
        return _pad_square(image, pad).resize((size, size), resample=Image.BICUBIC)
    return _crop(_resize_shortest(image, size), size, _ANCHORS[mode])


def prepare_image(
    image: Image.Image | np.ndarray,
    size: int = 224,
    crop: CropMode | str = CropMode.CENTER,
    pad: tuple[int, ...] = PAD_COLOUR,
) -> Image.Image:
    """Resize and crop to ``size``×``size`` according to ``crop`` (``pad``: the letterbox colour).
    ``squash`` is exactly SigLIP's own processor (a bicubic resize to the square, no crop)."""
    return fit_square(to_rgb_image(image), size, crop, pad)


def colour_values(image: Image.Image) -> torch.Tensor:
    """RGB image → [3, H, W] float32 in [0, 1] (the processor's ×1/255)."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray((arr * (1 / 255)).astype(np.float32).transpose(2, 0, 1)))


def normalise_colour(
    colour: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """[..., 3, H, W] colour in [0, 1] → the encoder's normalised pixel values (CLIP's by default)."""
    m = torch.tensor(mean, dtype=colour.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=colour.dtype).view(3, 1, 1)
    return (colour - m) / s


def colour_of(
    pixels: torch.Tensor, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD
) -> torch.Tensor:
    """Normalised pixel values [..., 3, H, W] → colour, clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels * s + m).clamp(0, 1)


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
