"""Flux Redux units: image tokens appended to the text context, and how strongly they count.

Redux has no attention patch. SigLIP's last hidden state (27×27 patches for so400m) goes through
Redux's two Linear layers, giving one context token per patch, as wide as T5's; those tokens are
appended to the T5 tokens of the cond rows for the steps the unit is active, and the transformer's
joint attention sees them like more text (Forge makes the text positions, all zero, from the
context's length). The uncond rows of true CFG get none, as ComfyUI applies Redux to the positive
conditioning only.

* **Downsampling** (factor 1–9): the token grid is resized to ``27 // factor`` per side with
  ``area``, ``bicubic``, ``bilinear`` or ``nearest-exact`` resampling (as the community "Redux
  advanced" nodes do on the Redux output), so factor 3 leaves 81 tokens: a weaker, cheaper
  reference.
* **Strength**, two modes (ComfyUI's ``StyleModelApply``): ``scale`` multiplies the tokens;
  ``attention bias`` adds ``log(strength)`` to every attention logit on those tokens, except the
  tokens' own rows, which multiplies their softmax weight by the strength without changing the
  tokens. Strength 0 adds no token at all (exactly no unit).
* **Region mask**: the tokens' keys reach only the image tokens inside the mask (the mask's area
  average per token, as a log weight: 0 is −∞) and the tokens themselves; text and other units'
  tokens do not see them, so the reference does not reach the rest of the picture through the
  text stream.

The bias (:func:`context_bias`) is an additive mask over the joint sequence ``[text, Redux
tokens…, image]``, one for all cond rows; the host passes it to the attention kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F

from ..errors import IPAdapterError
from .masks import RegionMask


class StrengthMode(str, Enum):
    """ComfyUI's ``strength_type``: ``multiply`` and ``attn_bias``."""

    SCALE = "scale"
    ATTENTION_BIAS = "attention bias"


class DownsampleMode(str, Enum):
    AREA = "area"
    BICUBIC = "bicubic"
    BILINEAR = "bilinear"
    NEAREST = "nearest-exact"


DOWNSAMPLE_RANGE = (1, 9)


def downsample_tokens(
    tokens: torch.Tensor, factor: int, mode: DownsampleMode | str = DownsampleMode.AREA
) -> torch.Tensor:
    """[N, g², C] tokens on a g×g grid → [N, (g // factor)², C]; factor 1 returns ``tokens``."""
    if factor == 1:
        return tokens
    n, count, width = tokens.shape
    grid = math.isqrt(count)
    if grid * grid != count:
        raise IPAdapterError(f"Redux tokens ({count}) are not a square grid, so they cannot be downsampled.")
    side = grid // factor
    if side < 1:
        raise IPAdapterError(f"downsampling {grid}×{grid} tokens by {factor} leaves none; use a factor up to {grid}.")
    x = tokens.transpose(1, 2).reshape(n, width, grid, grid)
    x = F.interpolate(x.float(), size=(side, side), mode=DownsampleMode(mode).value).to(tokens.dtype)
    return x.reshape(n, width, side * side).transpose(1, 2)


@dataclass
class ContextUnit:
    """A Redux unit ready for sampling: its tokens per reference row ([R, T, C]; R is 1, or the
    batch size when each generated image has its own reference), already downsampled and, in
    ``scale`` mode, multiplied by the strength."""

    number: int
    tokens: torch.Tensor
    strength: float
    mode: StrengthMode = StrengthMode.SCALE
    start: float = 0.0
    end: float = 1.0
    mask: RegionMask | None = None
    description: str = ""
    downsample: int = 1

    @property
    def applies(self) -> bool:
        return self.strength != 0

    def active_at(self, progress: float) -> bool:
        return self.applies and self.start <= progress <= self.end

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def log_bias(self) -> float | None:
        """``log(strength)`` on the tokens' logits, in attention-bias mode at a strength other than 1."""
        if self.mode is StrengthMode.ATTENTION_BIAS and self.strength != 1:
            return math.log(self.strength)
        return None

    @property
    def needs_bias(self) -> bool:
        return self.log_bias is not None or self.mask is not None

    def rows(self, refs: Sequence[int]) -> torch.Tensor:
        """The tokens for each row: ``refs[i]`` is row i's generated image."""
        if self.tokens.shape[0] == 1:
            return self.tokens.expand(len(refs), -1, -1)
        index = torch.tensor([int(r) % self.tokens.shape[0] for r in refs], device=self.tokens.device)
        return self.tokens.index_select(0, index)

    def log_line(self) -> str:
        mode = f" ({self.mode.value})" if self.strength != 1 else ""
        extras = f" · downsampled ÷{self.downsample}" if self.downsample != 1 else ""
        extras += " · masked" if self.mask is not None else ""
        return (
            f"IP-Adapter: unit {self.number} · {self.description} · {self.num_tokens} context tokens added · "
            f"strength {self.strength:g}{mode}{extras} · steps {self.start:.0%}–{self.end:.0%}"
        )


def context_rows(units: Sequence[ContextUnit], refs: Sequence[int]) -> torch.Tensor:
    """The Redux tokens appended to each cond row: the units' tokens one after another."""
    return torch.cat([u.rows(refs) for u in units], dim=1)


def context_bias(
    units: Sequence[ContextUnit],
    text_tokens: int,
    image_tokens: int,
    latent_hw: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """The additive attention mask [1, 1, L, L] over ``[text, units' tokens…, image]`` (query
    rows, key columns), or ``None`` when no unit needs one."""
    if not any(u.needs_bias for u in units):
        return None
    total = text_tokens + sum(u.num_tokens for u in units) + image_tokens
    bias = torch.zeros(total, total, dtype=torch.float32)
    first_image = total - image_tokens
    at = text_tokens
    for unit in units:
        span = slice(at, at + unit.num_tokens)
        at += unit.num_tokens
        column = bias[:, span]
        if unit.log_bias is not None:
            column += unit.log_bias
        if unit.mask is not None:
            column[:first_image] = -math.inf  # text and other units' tokens do not see a masked unit
            grid = unit.mask.for_layer(image_tokens, latent_hw, torch.device("cpu"), torch.float32).reshape(-1, 1)
            column[first_image:] += torch.log(grid)
        column[span] = 0.0  # the tokens' own rows, as ComfyUI leaves them
    return bias.to(device=device, dtype=dtype)[None, None]
