"""Forge 1 glue: Forge 2's lifetime and patches (``host/forge/generation.py``: clone the UNet patcher
each pass, one attn2 replace patch per cross-attention block chaining any patch already there, K/V
handed to the memory manager, step fractions from ``on_cfg_denoiser``), with Forge 1's
:data:`~.readers.FORGE1` for the kernel, the sigma schedule and the dtype.

Forge 1's processing resets ``forge_objects`` from ``forge_objects_after_applying_lora`` before
every ``process_before_every_sampling``, the hires pass included (it calls the hook once there,
after the reset; Forge 2 calls it once more before), and its CFG denoiser reports each step through
``on_cfg_denoiser`` with ``denoiser.p`` set, as A1111's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..callbacks import register
from ..common import new_state, register_common
from ..forge.generation import ForgeState, before_sampling, on_cfg_denoiser, postprocess
from ..forge.readers import Readers
from .placement import current_placement
from .readers import FORGE1

__all__ = ["Forge1State", "before_sampling", "on_cfg_denoiser", "postprocess", "process", "register_callbacks"]


@dataclass
class Forge1State(ForgeState):
    readers: ClassVar[Readers] = FORGE1


def process(p: Any, args: tuple) -> None:
    new_state(p, args, Forge1State)


def register_callbacks() -> None:
    """Once, at script import."""
    from modules import script_callbacks

    register(script_callbacks.on_cfg_denoiser, on_cfg_denoiser, "ipadapter_cfg_denoiser")
    register_common(script_callbacks, current_placement)
