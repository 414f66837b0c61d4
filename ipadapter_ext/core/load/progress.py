"""Progress of cold model loads in the console, shown the way the WebUI shows its own (tqdm).

A CLIP ViT-H encoder is 2.5 GB and bigG 3.7 GB; read from a slow disk, the first generation
with one sits silent for tens of seconds. The engine says what it loads (one console line per
cold load) and, while a file is read, :func:`reading` shows a byte counter that appears only
once the read has taken :data:`SHOW_AFTER_S` (tqdm's ``delay``), so fast loads print nothing more.

The label travels in a context variable rather than through every loader's signature: the
loaders (adapter, encoder) call :func:`~.formats.read_flat_tensors`, which asks :func:`current`
whether someone wants progress for this read. A context variable is per thread, so a route
loading on another thread never draws into a generation's bar.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar

#: A load shows its bar once it has run this long (the issue's threshold for "slow").
SHOW_AFTER_S = 2.0

_label: ContextVar[str | None] = ContextVar("ipadapter_load_label", default=None)


@contextlib.contextmanager
def labelled(label: str) -> Iterator[None]:
    """Reads of model files inside this block show progress under ``label``."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def current() -> str | None:
    return _label.get()


@contextlib.contextmanager
def reading(total_bytes: int, label: str | None = None) -> Iterator[Callable[[int], None]]:
    """``update(n)`` after each ``n`` bytes read; a tqdm bar on stderr after :data:`SHOW_AFTER_S`.
    Without tqdm (it ships with transformers, so only in odd set-ups) nothing is shown."""
    label = label or current()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - transformers depends on tqdm
        tqdm = None
    if label is None or tqdm is None:
        yield lambda _n: None
        return
    bar = tqdm(
        total=total_bytes,
        desc=label,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        delay=SHOW_AFTER_S,
        file=sys.stderr,
        leave=True,
    )
    try:
        yield bar.update
    finally:
        bar.close()
