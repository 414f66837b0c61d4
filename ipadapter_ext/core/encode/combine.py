"""Several reference images in one unit: per-image weights, then one combine mode.

Modes act on the encoder outputs *before* the projection (as in ComfyUI_IPAdapter_plus), on
every field the adapter uses (image embeds, hidden states, face embeddings):

* concat: keep every image's tokens (T·n keys); attention itself mixes them;
* add: ``Σ e_i``; average: ``mean e_i``;
* norm average: ``mean(e_i / ‖e‖)`` with the L2 norm taken per coordinate *across* images;
* subtract: ``e_1 − mean(e_2…e_n)``.

``image_weights`` multiply each image's outputs first. With a single image every mode keeps it as
it is (``norm average`` would otherwise reduce it to its signs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch

from ..errors import IPAdapterError
from ..project.projections import EncodedImages

#: Keeps ``norm average`` finite where a coordinate is zero in every image.
NORM_EPS = 1e-12


class CombineMode(str, Enum):
    CONCAT = "concat"
    AVERAGE = "average"
    NORM_AVERAGE = "norm average"
    ADD = "add"
    SUBTRACT = "subtract"


def _norm_average(t: torch.Tensor) -> torch.Tensor:
    return (t / t.norm(dim=0, keepdim=True).clamp_min(NORM_EPS)).mean(dim=0, keepdim=True)


_REDUCERS: dict[CombineMode, Callable[[torch.Tensor], torch.Tensor]] = {
    CombineMode.CONCAT: lambda t: t,
    CombineMode.AVERAGE: lambda t: t.mean(dim=0, keepdim=True),
    CombineMode.NORM_AVERAGE: _norm_average,
    CombineMode.ADD: lambda t: t.sum(dim=0, keepdim=True),
    CombineMode.SUBTRACT: lambda t: t[:1] - t[1:].mean(dim=0, keepdim=True),
}


def combine_encoded(
    enc: EncodedImages, mode: CombineMode | str = CombineMode.CONCAT, weights: Sequence[float] | None = None
) -> EncodedImages:
    """The N images' encoder outputs weighted and combined (N stays N for concat, else 1)."""
    mode = CombineMode(mode)
    n = _count(enc)
    if weights is not None:
        if len(weights) != n:
            raise IPAdapterError(
                f"image_weights has {len(weights)} numbers for {n} reference image(s); give one weight per image."
            )
        scale = torch.tensor([float(w) for w in weights])
        enc = enc.map(lambda t: t * scale.to(t.device, t.dtype).view(-1, *([1] * (t.ndim - 1))))
    if n == 1:
        return enc
    return enc.map(_REDUCERS[mode])


def _count(enc: EncodedImages) -> int:
    for value in (enc.image_embeds, enc.hidden, enc.face, enc.last_hidden):
        if value is not None:
            return int(value.shape[0])
    return 0
