"""Per-generation K/V of one unit: computed once, then only laid out for each call's rows.

``K_ip``/``V_ip`` depend only on the reference, never on the step, so they are projected once per
generation for the cond and the uncond tokens. Each attention call then needs them arranged to
match its rows (cond rows see the reference, uncond rows the negative); those arrangements are
cached by row layout, which changes only a handful of times per generation (batching mode,
skipped uncond, hires pass).

"Precise" weight types swap the branches on some layers: there the uncond rows see the
reference and the cond rows zero tokens, whose K and V are exactly zero (the projections have no
bias), so the cond rows get no image term while CFG pushes away from the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..load.adapter import IPAdapterModel

#: Row layouts remembered per layer; a generation uses a few, so this only bounds pathologies.
MAX_LAYOUTS = 8

_UNCOND, _COND, _ZERO = 0, 1, 2


class UnitKV:
    """K/V for every layer, stacked as row 0 = uncond, row 1 = cond (row 2 = zeros when swapped
    layers exist)."""

    def __init__(
        self,
        adapter: IPAdapterModel,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        device: torch.device | str,
        dtype: torch.dtype,
        swapped: Sequence[bool] = (),
    ) -> None:
        if uncond.shape[1] != cond.shape[1]:
            # Attention over k copies of the same tokens equals attention over one copy, so a
            # single negative image can stand against several concatenated references.
            if cond.shape[1] % uncond.shape[1]:
                raise ValueError(f"uncond tokens ({uncond.shape[1]}) do not divide cond tokens ({cond.shape[1]})")
            uncond = uncond.repeat(1, cond.shape[1] // uncond.shape[1], 1)
        tokens = torch.cat((uncond, cond), dim=0)  # [2, T, ctx]
        self.kv = adapter.layer_kv(tokens, device, dtype)
        self.swapped = tuple(bool(s) for s in swapped) or (False,) * len(self.kv)
        if any(self.swapped):
            self.kv = [
                (torch.cat((k, torch.zeros_like(k[:1]))), torch.cat((v, torch.zeros_like(v[:1])))) if swap else (k, v)
                for (k, v), swap in zip(self.kv, self.swapped, strict=True)
            ]
        self.num_tokens = tokens.shape[1]
        self._layouts: list[dict[tuple[bool, ...], tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in self.kv]

    def __len__(self) -> int:
        return len(self.kv)

    def replace(self, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Swap in moved copies of the per-layer K/V (a host's memory manager moved them); the
        cached row arrangements refer to the old tensors, so they are dropped."""
        if len(kv) != len(self.kv):
            raise ValueError(f"expected K/V for {len(self.kv)} layers, got {len(kv)}")
        self.kv = list(kv)
        self._layouts = [{} for _ in self.kv]

    def rows(self, layer: int, cond_rows: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V with one row per attention row: ``cond_rows[i]`` says whether row i is cond."""
        layout = tuple(bool(r) for r in cond_rows)
        cache = self._layouts[layer]
        hit = cache.get(layout)
        if hit is not None:
            return hit
        k, v = self.kv[layer]
        cond_row, uncond_row = (_ZERO, _COND) if self.swapped[layer] else (_COND, _UNCOND)
        index = torch.tensor([cond_row if r else uncond_row for r in layout], dtype=torch.long, device=k.device)
        result = (k.index_select(0, index), v.index_select(0, index))
        if len(cache) >= MAX_LAYOUTS:
            cache.pop(next(iter(cache)))
        cache[layout] = result
        return result
