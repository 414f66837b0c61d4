"""Accept ``"args": UNIT`` (one object, not a list) in ``alwayson_scripts["IP-Adapter"]``.

The WebUI copies ``args`` into the script's argument slots by index before any extension code
runs, so a bare object there fails inside the WebUI with ``KeyError: 0``. This ASGI wrapper wraps
such an object in a list for the txt2img/img2img routes and passes every other request through
untouched. It wraps the app's already built middleware stack (the WebUI builds it before
``on_app_started``), because adding middleware to a started app is refused by Starlette.
"""

from __future__ import annotations

import json
from typing import Any

PATHS = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img")
SCRIPT = "ip-adapter"


def wrap_bare_unit(body: bytes) -> bytes | None:
    """The rewritten JSON body, or ``None`` when nothing needs to change."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    scripts = data.get("alwayson_scripts") if isinstance(data, dict) else None
    if not isinstance(scripts, dict):
        return None
    changed = False
    for name, entry in scripts.items():
        if name.lower() == SCRIPT and isinstance(entry, dict) and isinstance(entry.get("args"), dict):
            entry["args"] = [entry["args"]]
            changed = True
    return json.dumps(data).encode() if changed else None


class BareUnitMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        rewritten = wrap_bare_unit(body)
        if rewritten is not None:
            body = rewritten
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install(app: Any) -> None:
    """Idempotent: wraps the app's middleware stack once."""
    stack = app.middleware_stack or app.build_middleware_stack()
    if not isinstance(stack, BareUnitMiddleware):
        app.middleware_stack = BareUnitMiddleware(stack)
