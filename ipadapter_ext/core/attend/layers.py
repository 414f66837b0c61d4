"""Which UNet cross-attention module each adapter layer belongs to.

Checkpoint keys ``{2n+1}.to_k_ip`` follow diffusers' processor order: all down blocks, then all
up blocks, then the middle block. LDM UNets (A1111's ``ldm``/``sgm``, Forge) run input blocks,
then the middle block, then output blocks. Weight presets are written against the
SpatialTransformer index in *execution* order (``t_idx``). This module turns the names of a UNet's
``attn2`` modules into both orders, so no code anywhere else has to know the tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = re.compile(
    r"(?:^|\.)(?P<block>input_blocks|middle_block|output_blocks)(?:\.(?P<id>\d+))?\.(?P<sub>\d+)"
    r"\.transformer_blocks\.(?P<depth>\d+)\.attn2$"
)
_KEY_RANK = {"input": 0, "output": 1, "middle": 2}  # checkpoint order: down, up, mid
_EXEC_RANK = {"input": 0, "middle": 1, "output": 2}  # execution order


@dataclass(frozen=True)
class Attn2Slot:
    """One cross-attention module and its place in both orders."""

    name: str  # module path as given by the host
    block: str  # "input", "middle" or "output"
    block_id: int  # index in input_blocks/output_blocks; 0 for the middle block
    depth_index: int  # j in transformer_blocks[j]
    key_index: int  # n: checkpoint keys 2n+1
    transformer_index: int  # t_idx: SpatialTransformer in execution order

    @property
    def checkpoint_key(self) -> int:
        return 2 * self.key_index + 1


def map_ldm_attn2(names: Iterable[str]) -> list[Attn2Slot]:
    """Slots for the given ``attn2`` module names, sorted by checkpoint key order.

    Names may carry any prefix (``model.diffusion_model.``…). Unrecognised names raise
    ``ValueError``: a UNet whose layout cannot be mapped must not be hooked by guesswork.
    """
    parsed = []
    for name in names:
        m = _NAME.search(name)
        if not m:
            raise ValueError(f"not an LDM cross-attention module name: {name!r}")
        block = m.group("block").split("_")[0]
        block_id = int(m.group("id") or 0) if block != "middle" else 0
        parsed.append((name, block, block_id, int(m.group("depth"))))
    transformers = sorted({(_EXEC_RANK[b], i) for _, b, i, _ in parsed})
    t_index = {t: n for n, t in enumerate(transformers)}
    ordered = sorted(parsed, key=lambda p: (_KEY_RANK[p[1]], p[2], p[3]))
    return [
        Attn2Slot(name, block, block_id, depth, n, t_index[(_EXEC_RANK[block], block_id)])
        for n, (name, block, block_id, depth) in enumerate(ordered)
    ]
