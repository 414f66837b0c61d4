"""The sizes and names the tiny SDXL's pieces share: :class:`Spec`, CLIP's vocabulary size and
the open_clip architecture name.

Its own module so that :mod:`tests.e2e.sdxl_shapes` (the checkpoint's tensors),
:mod:`tests.e2e.sdxl_configs` (the yaml, the text-encoder configs, the tokenizer) and
:mod:`tests.e2e.sdxl` (the writer) agree on them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN_CLIP_ARCH = "e2e-tiny-sdxl-bigg"

#: CLIP's byte-pair tokenizer (both text encoders): 256 byte symbols, the same with an end-of-word
#: mark, the merges, then the two special tokens.
VOCAB_SIZE = 49408


@dataclass(frozen=True)
class Spec:
    """The sizes of the tiny SDXL. SDXL itself: 320 channels × (1, 2, 4), 64-wide heads, a 768-wide
    CLIP-L and a 1280-wide OpenCLIP bigG (context 2048, pooled 1280)."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 1, 2)
    res_blocks: int = 2
    depths: tuple[int, ...] = (0, 2, 10)  # transformer depth per level (0: no attention), as SDXL
    head_channels: int = 16
    clip_l_width: int = 32
    clip_l_layers: int = 3
    clip_l_heads: int = 2
    bigg_width: int = 64
    bigg_layers: int = 3
    bigg_heads: int = 4
    pooled: int = 64
    vae_ch: int = 32
    vae_mult: tuple[int, ...] = (1, 2, 2, 2)
    context_length: int = 77

    @property
    def context_dim(self) -> int:
        return self.clip_l_width + self.bigg_width

    @property
    def adm_in_channels(self) -> int:
        return self.pooled + 3 * 2 * 256  # pooled text + original size, crop, target size (2×256 each)

    @property
    def time_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def attention_resolutions(self) -> list[int]:
        return [2**level for level, depth in enumerate(self.depths) if depth]


SPEC = Spec()
