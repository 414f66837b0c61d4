"""Freed heap memory goes back to the OS after a generation with units (``host/heap_trim.py``):
glibc keeps what many threads free in its arenas, which the Forge soak under glibc saw as 1–3 GiB
of resident memory over 300 requests with the live objects flat."""

from __future__ import annotations

import ctypes.util
import sys

import pytest
import torch

from ipadapter_ext.host import common, heap_trim
from tests.a1111_env import PLUS, job, run_job, unit_args


@torch.no_grad()
def test_the_heap_is_trimmed_after_a_generation_with_units_only(webui, monkeypatch):
    trims: list[int] = []
    monkeypatch.setattr(common, "trim_heap", lambda: trims.append(1) or True)
    run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert trims == []  # a generation without units: the host's business
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert trims == [1]
    run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert trims == [1]


def test_trim_heap_calls_glibc_where_there_is_one(monkeypatch):
    glibc = sys.platform.startswith("linux") and "libc.so.6" in str(ctypes.util.find_library("c"))
    assert heap_trim.trim_heap() is glibc  # the real call (cheap: it only hands back free pages)
    heap_trim._malloc_trim.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert heap_trim.trim_heap() is False  # elsewhere: nothing to call, nothing done
    finally:
        heap_trim._malloc_trim.cache_clear()


def test_a_libc_without_malloc_trim_is_left_alone(monkeypatch):
    class Musl:  # musl's libc has no malloc_trim
        pass

    heap_trim._malloc_trim.cache_clear()
    monkeypatch.setattr(heap_trim.ctypes, "CDLL", lambda name: Musl())
    try:
        assert heap_trim.trim_heap() is False
    finally:
        heap_trim._malloc_trim.cache_clear()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
