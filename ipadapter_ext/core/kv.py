"""Per-generation K/V of one unit: computed once, then only laid out for each call's rows.

``K_ip``/``V_ip`` depend only on the reference, never on the step, so they are projected once per
generation for the cond and the uncond tokens. Each attention call then needs them arranged to
match its rows (cond rows see the reference, uncond rows the negative); those arrangements are
cached by row layout, which changes only a handful of times per generation (batching mode,
skipped uncond, hires pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .adapter import IPAdapterModel

#: Row layouts remembered per layer; a generation uses a few, so this only bounds pathologies.
MAX_LAYOUTS = 8


class UnitKV:
    """K/V for every layer, stacked as row 0 = uncond, row 1 = cond."""

    def __init__(
        self,
        adapter: IPAdapterModel,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        tokens = torch.cat((uncond, cond), dim=0)  # [2, T, ctx]
        self.kv = adapter.layer_kv(tokens, device, dtype)
        self.num_tokens = tokens.shape[1]
        self._layouts: list[dict[tuple[bool, ...], tuple[torch.Tensor, torch.Tensor]]] = [{} for _ in self.kv]

    def __len__(self) -> int:
        return len(self.kv)

    def rows(self, layer: int, cond_rows: Sequence[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V with one row per attention row: ``cond_rows[i]`` says whether row i is cond."""
        layout = tuple(bool(r) for r in cond_rows)
        cache = self._layouts[layer]
        hit = cache.get(layout)
        if hit is not None:
            return hit
        k, v = self.kv[layer]
        index = torch.tensor(layout, dtype=torch.long, device=k.device)
        result = (k.index_select(0, index), v.index_select(0, index))
        if len(cache) >= MAX_LAYOUTS:
            cache.pop(next(iter(cache)))
        cache[layout] = result
        return result
