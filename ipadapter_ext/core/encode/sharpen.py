"""Contrast-adaptive sharpening of a reference before it is encoded.

The encoder sees the reference at 224 px; a downscaled photo loses the fine texture that style
references are often chosen for. AMD's contrast-adaptive sharpening (CAS), as ComfyUI's IP-Adapter
nodes offer it ("sharpening", 0–1), restores some of it without ringing: each pixel is pushed
away from its four direct neighbours by an amount that shrinks where the local contrast is
already high. The same formula is used here so that a value carries over between the two.

Per pixel, over its 3×3 neighbourhood (zero outside the image): ``mn``/``mx`` are the minimum and
maximum of the cross (centre and four neighbours, clamped to [0, 1]) plus those of the four
diagonals; ``amp = sqrt(min(mn, 2 − mx) / mx)``; ``w = −amp · (1/8 + amount · (1/5 − 1/8))``; the
output is ``(e + w · (n + s + w + e neighbours)) / (1 + 4w)``, clamped to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sharpen(colour: torch.Tensor, amount: float) -> torch.Tensor:
    """``colour`` [..., H, W] in [0, 1] (channels or batch in front), sharpened by ``amount`` in
    [0, 1]; ``amount`` 0 (or less) returns the input itself."""
    if amount <= 0:
        return colour
    padded = F.pad(colour, (1, 1, 1, 1))

    def at(dy: int, dx: int) -> torch.Tensor:
        h, w = colour.shape[-2:]
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    centre, up, down, left, right = at(0, 0), at(-1, 0), at(1, 0), at(0, -1), at(0, 1)
    corners = torch.stack((at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)))
    cross = torch.stack((up, left, centre, right, down))
    low = cross.amin(dim=0).clamp(min=0.0) + corners.amin(dim=0).clamp(min=0.0)
    high = cross.amax(dim=0).clamp(max=1.0) + corners.amax(dim=0).clamp(max=1.0)
    amp = torch.sqrt(torch.minimum(low, 2.0 - high) / high)
    weight = -amp * (1 / 8 + float(amount) * (1 / 5 - 1 / 8))
    out = ((up + down + left + right) * weight + centre) / (1 + 4 * weight)
    return torch.nan_to_num(out).clamp(0.0, 1.0)
