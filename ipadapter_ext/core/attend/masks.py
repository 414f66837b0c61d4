"""Region masks: where on the canvas a unit acts, resampled to each layer's token grid.

The mask multiplies the unit's image term per spatial token (text attention is untouched), so
a zero in the resampled mask gives exactly the text-only output there, and units with
complementary masks compose one scene.

Each UNet level halves the latent with a stride-2, padding-1 convolution, which maps a side of
``s`` to ``ceil(s / 2)``. A layer's grid is therefore found exactly by halving the latent's
height and width until their product equals the layer's token count, for any aspect ratio and
odd sizes, instead of estimating it from ``sqrt(tokens)`` and padding the result (ComfyUI,
diffusers). The mask is stretched to the canvas, like an inpainting mask drawn over the output.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import IPAdapterError

#: Grids remembered per mask: a generation uses one per UNet level and pass (hires adds a few).
MAX_GRIDS = 16


def token_grid(tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) of a layer with ``tokens`` spatial tokens for a latent of ``latent_hw``."""
    h, w = latent_hw
    for _ in range(16):
        if h * w == tokens:
            return h, w
        if h * w < tokens:
            break
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    # Not an LDM downsampling chain (a custom UNet): keep the aspect ratio as well as possible.
    rows = max(1, round(math.sqrt(tokens * latent_hw[0] / latent_hw[1])))
    while tokens % rows:
        rows -= 1
    return rows, tokens // rows


def mask_tensor(image: object, where: str = "mask") -> torch.Tensor:
    """A mask image (PIL in any mode, or an array in [0, 1] or [0, 255]) → float [H, W] in [0, 1].
    White (1) is where the unit acts. An alpha channel, when present, is the mask."""
    if isinstance(image, Image.Image):
        if image.mode in ("RGBA", "LA") and image.getextrema()[-1][0] < 255:
            image = image.getchannel("A")
        arr = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    elif isinstance(image, torch.Tensor | np.ndarray):
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr.mean(axis=-1) if arr.shape[-1] in (1, 3, 4) else arr[0]
        if arr.ndim != 2:
            raise IPAdapterError(f"{where}: expected a 2-D mask, got an array of shape {tuple(arr.shape)}.")
        if arr.max(initial=0.0) > 1.0:
            arr = arr / 255.0
    else:
        raise IPAdapterError(f"{where}: expected a mask image, got {type(image).__name__}.")
    if arr.size == 0:
        raise IPAdapterError(f"{where}: the mask is empty.")
    return torch.from_numpy(np.clip(arr, 0.0, 1.0).copy())


class RegionMask:
    """One unit's mask, resampled on demand per (tokens, latent size) and cached."""

    def __init__(self, mask: torch.Tensor) -> None:
        if mask.ndim != 2:
            raise ValueError("mask must be [H, W]")
        self.mask = mask.float()
        self._grids: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @property
    def aspect(self) -> float:
        return self.mask.shape[1] / self.mask.shape[0]

    def grid(self, rows: int, cols: int) -> torch.Tensor:
        """The mask at ``rows × cols``: each cell is the mean of the mask pixels it covers (area
        resampling), so a cell is exactly 0 only where the whole cell is black, exactly 1 where it
        is all white, and a thin stroke still counts in the cell it crosses."""
        m = self.mask[None, None]
        if (rows, cols) != tuple(self.mask.shape):
            m = F.interpolate(m, size=(rows, cols), mode="area")
        return m[0, 0].clamp_(0.0, 1.0)

    def for_layer(
        self, tokens: int, latent_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """[1, 1, tokens, 1]: broadcasts over the attention's [batch, heads, tokens, dim] layout."""
        key = (tokens, latent_hw, device, dtype)
        hit = self._grids.get(key)
        if hit is not None:
            return hit
        rows, cols = token_grid(tokens, latent_hw)
        value = self.grid(rows, cols).reshape(1, 1, tokens, 1).to(device=device, dtype=dtype)
        self._grids[key] = value
        while len(self._grids) > MAX_GRIDS:
            self._grids.popitem(last=False)
        return value
