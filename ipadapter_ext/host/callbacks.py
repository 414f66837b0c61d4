"""Registering WebUI callbacks by name where the host's ``script_callbacks`` takes one.

A1111 1.8 added the ``name=`` keyword to every ``on_*`` registration (names identify callbacks in
its *Callback order* settings and in its timing report); hosts built on an older A1111 take the
callback alone (Forge Classic 1f95d717: ``def on_cfg_denoiser(callback)``), and passing the
keyword there raises ``TypeError`` at script load, so the whole extension would fail to load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _takes_name(registration: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(registration).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function: no keyword we can know of
        return False
    return any(p.name == "name" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def register(registration: Callable[..., Any], callback: Callable[..., Any], name: str) -> None:
    """``registration(callback, name=name)``, or ``registration(callback)`` on hosts without names."""
    if _takes_name(registration):
        registration(callback, name=name)
    else:
        registration(callback)
