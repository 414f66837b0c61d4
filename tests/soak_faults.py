"""Faults planted into the A1111 API double (``tests/doubles/a1111_api.py --fault NAME``) to show
that each of the soak tool's checks catches the kind of bug it is there for. They exist only here.

* ``hook-after-interrupt``: an interrupted generation leaves its hooks on the UNet (and out of the
  sweep), so the next generation without a unit still gets an image term;
* ``cache-key``: the embedding cache forgets the image in its key, so a unit gets the encoding of
  whatever image was encoded before with the same encoder and crop;
* ``leak``: every generation keeps 16 MiB alive for good.
"""

from __future__ import annotations

from typing import Any

FAULTS = ("hook-after-interrupt", "cache-key", "leak")
_kept: list = []


def plant(name: str) -> None:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; one of {', '.join(FAULTS)}")
    globals()["_" + name.replace("-", "_")]()


def _hook_after_interrupt() -> None:
    from modules import shared

    from ipadapter_ext.host.a1111 import generation

    original = generation.GenerationState.end_pass

    def end_pass(self: Any, p: Any) -> None:
        if shared.state.interrupted and self.job is not None:
            generation._live_jobs.discard(self.job)  # the sweep cannot find it
            self.job = None  # and nothing detaches it
            return
        original(self, p)

    generation.GenerationState.end_pass = end_pass


def _cache_key() -> None:
    from ipadapter_ext.core.encode.cache import EmbeddingCache

    original = EmbeddingCache.get_or_compute

    def get_or_compute(self: Any, key: tuple, compute: Any) -> Any:
        return original(self, key[1:], compute)  # key[0] is the image's digest

    EmbeddingCache.get_or_compute = get_or_compute


def _leak() -> None:
    import torch

    from ipadapter_ext.host import a1111

    original = a1111.process

    def process(p: Any, args: tuple) -> None:
        _kept.append(torch.ones(4 * 2**20))  # 16 MiB, touched, never freed
        original(p, args)

    a1111.process = process
