"""IP-Adapter errors on the HTTP path: a 422 whose ``detail`` is the message, not a 500 traceback."""

from __future__ import annotations

from ..core.errors import IPAdapterError

STATUS = 422


def http_error(error: IPAdapterError) -> Exception:
    """The WebUI's API answers an ``HTTPException`` with its status and detail and prints no
    traceback; other exceptions become a 500 with a traceback in the console."""
    try:
        from fastapi import HTTPException
    except ImportError:  # pragma: no cover - the WebUI always has fastapi
        return error
    exc = HTTPException(status_code=STATUS, detail=str(error))
    exc.__cause__ = error
    return exc
