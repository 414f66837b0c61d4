"""Where a generation's models run, and the rule that they leave the accelerator after use.

Kept apart from the engine so that what decides devices can be read (and tested) on its own: the
host measures a :class:`Placement` from the UNet, the engine encodes and projects inside
:func:`running_on`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .encode.encoder import ImageEncoder
    from .load.adapter import IPAdapterModel


@dataclass
class Placement:
    """Where the UNet runs; encoders and K/V follow it."""

    device: torch.device
    dtype: torch.dtype
    encoder_dtype: torch.dtype = torch.float32
    #: The encoder and the adapter's projection leave the device after use (A1111 by default and
    #: with --medvram/--lowvram, Forge always): accelerator memory the host does not account for.
    offload_encoder: bool = False
    upcast_attention: bool = False


@contextmanager
def running_on(place: Placement, adapter: IPAdapterModel, encoder: ImageEncoder | None) -> Iterator[None]:
    """Encode and project on ``place.device``; with ``offload_encoder`` the encoder and the
    projection are back on the CPU afterwards, whatever happened, so nothing of ours stays in
    accelerator memory the host does not know about. The encoder goes to the device only when an
    image is encoded (embedding-cache hits leave it where it is)."""
    if encoder is not None:
        encoder.run_on = place.device
    try:
        yield
    finally:
        if encoder is not None:
            encoder.run_on = None
        if place.offload_encoder:
            adapter.to("cpu")
            if encoder is not None:
                encoder.to("cpu")
