"""Per-generation K/V of one unit: computed once, then only laid out for each call's rows.

``K_ip``/``V_ip`` depend only on the reference, never on the step, so they are projected once per
generation for the cond and the uncond tokens. Each attention call then needs them arranged to
match its rows (cond rows see the reference, uncond rows the negative); those arrangements are
cached by row layout, which changes only a handful of times per generation (batching mode,
skipped uncond, hires pass).

"Precise" weight types swap the branches on some layers: there the uncond rows see the
reference and the cond rows zero tokens, whose K and V are exactly zero (the projections have no
bias), so the cond rows get no image term while CFG pushes away from the reference.

Tokens may come in *groups* (a tiled reference: one group per tile, each under its own band of
the output): the groups lie side by side along the token axis, ``G·T`` tokens, and the attention
takes a softmax per group. A second token set may replace the cond tokens on some layers (the
composition image, on the composition block); each layer knows its own group count.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ..load.adapter import IPAdapterModel

#: Row layouts remembered per layer; a generation uses a few, so this only bounds pathologies.
MAX_LAYOUTS = 8


@dataclass(frozen=True)
class TokenSet:
    """Cond and uncond image tokens, [n or 1, G·T, ctx] each, in ``groups`` groups of T tokens."""

    cond: torch.Tensor
    uncond: torch.Tensor
    groups: int = 1

    @property
    def rows(self) -> int:
        return max(int(self.cond.shape[0]), int(self.uncond.shape[0]))


def _stacked(tokens: TokenSet, n: int) -> torch.Tensor:
    """[2n, G·T, ctx]: rows [0, n) uncond, [n, 2n) cond, each side expanded to ``n`` rows."""
    cond, uncond = tokens.cond, tokens.uncond
    if uncond.shape[1] != cond.shape[1]:
        # Attention over k copies of the same tokens equals attention over one copy, so a
        # single negative image can stand against several concatenated references.
        if tokens.groups != 1 or cond.shape[1] % uncond.shape[1]:
            raise ValueError(f"uncond tokens ({uncond.shape[1]}) do not divide cond tokens ({cond.shape[1]})")
        uncond = uncond.repeat(1, cond.shape[1] // uncond.shape[1], 1)
    for side in (cond, uncond):
        if side.shape[0] not in (1, n):
            raise ValueError(f"a token side has {side.shape[0]} rows; expected 1 or {n}")
    return torch.cat((uncond.expand(n, -1, -1), cond.expand(n, -1, -1)), dim=0)


class UnitKV:
    """K/V for every layer, stacked as rows [0, n) = uncond, [n, 2n) = cond (then one zero row
    when the layer is swapped), where n is the number of per-image references: 1 normally; the
    batch size when each generated image has its own reference or its own uncond (img2img with
    several init images as the references, ``per_batch_image``, noise seeded per image), so row
    ``n + i`` is image i's cond."""

    def __init__(
        self,
        adapter: IPAdapterModel,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        device: torch.device | str,
        dtype: torch.dtype,
        swapped: Sequence[bool] = (),
        *,
        groups: int = 1,
        alt: TokenSet | None = None,
        alt_layers: Collection[int] = (),
    ) -> None:
        main = TokenSet(cond, uncond, groups)
        alt_layers = sorted(set(alt_layers)) if alt is not None else []
        self.per_image = max(main.rows, alt.rows if alt is not None else 1)
        n = self.per_image
        tokens = _stacked(main, n)
        self.kv = adapter.layer_kv(tokens, device, dtype)
        self.groups = [groups] * len(self.kv)
        if alt is not None and alt_layers:
            for layer, kv in zip(
                alt_layers, adapter.layer_kv(_stacked(alt, n), device, dtype, alt_layers), strict=True
            ):
                self.kv[layer] = kv
                self.groups[layer] = alt.groups
        self.swapped = tuple(bool(s) for s in swapped) or (False,) * len(self.kv)
        if any(self.swapped):
            self.kv = [
                (torch.cat((k, torch.zeros_like(k[:1]))), torch.cat((v, torch.zeros_like(v[:1])))) if swap else (k, v)
                for (k, v), swap in zip(self.kv, self.swapped, strict=True)
            ]
        self.num_tokens = tokens.shape[1]
        self._layouts: list[dict[tuple, tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in self.kv]

    def __len__(self) -> int:
        return len(self.kv)

    def replace(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Swap in moved copies of the per-layer K/V (a host's memory manager moved them); the
        cached row arrangements refer to the old tensors, so they are dropped."""
        if len(kv) != len(self.kv):
            raise ValueError(f"expected K/V for {len(self.kv)} layers, got {len(kv)}")
        self.kv = list(kv)
        self._layouts = [{} for _ in self.kv]

    def rows(
        self, layer: int, cond_rows: Sequence[bool], refs: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V with one row per attention row: ``cond_rows[i]`` says whether row i is cond,
        ``refs[i]`` which generated image of the batch it belongs to (only read when each image
        has its own reference; unknown: image 0)."""
        n = self.per_image
        images = tuple(int(r) % n for r in refs) if n > 1 and refs is not None else (0,) * len(cond_rows)
        layout = tuple(bool(r) for r in cond_rows)
        key = (layout, images) if n > 1 else layout
        cache = self._layouts[layer]
        hit = cache.get(key)
        if hit is not None:
            return hit
        k, v = self.kv[layer]
        zero = 2 * n
        if self.swapped[layer]:  # cond rows see zeros, uncond rows the reference
            index_list = [zero if r else n + i for r, i in zip(layout, images, strict=True)]
        else:
            index_list = [n + i if r else i for r, i in zip(layout, images, strict=True)]
        index = torch.tensor(index_list, dtype=torch.long, device=k.device)
        result = (k.index_select(0, index), v.index_select(0, index))
        if len(cache) >= MAX_LAYOUTS:
            cache.pop(next(iter(cache)))
        cache[key] = result
        return result
