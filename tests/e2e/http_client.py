"""The opt-in end-to-end suite's HTTP side: a JSON client on the standard library only, and the
deterministic reference images the tests send and decode. Kept apart from the process harness
(``webui.py``) so that the soak tool and the tests share one client without the harness."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

REQUEST_TIMEOUT_S = float(os.environ.get("WEBUI_REQUEST_TIMEOUT", "300"))


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Client:
    """JSON over HTTP with ``urllib``; every call has a timeout, non-2xx answers are returned."""

    def __init__(self, base_url: str, auth: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if auth:  # WEBUI_AUTH=user:password for a WebUI started with --api-auth
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def request(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Response:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return Response(answer.status, answer.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read())

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT_S) -> Response:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = REQUEST_TIMEOUT_S) -> Response:
        return self.request("POST", path, body, timeout=timeout)

    def answers(self, path: str, timeout: float = 5.0) -> bool:
        try:
            return self.get(path, timeout=timeout).status == 200
        except (OSError, urllib.error.URLError):
            return False


def png_b64(size: int = 96, seed: int = 0) -> str:
    """A deterministic reference image (a gradient with seeded noise) as base64 PNG."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.arange(size, dtype=np.int32) * (256 // size)
    xx, yy = np.meshgrid(ramp, ramp)
    noise = rng.integers(0, 64, (size, size), dtype=np.int32)
    pixels = np.stack([xx, yy, (xx + yy) // 2 + noise], -1).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pixels(b64: str):
    """The decoded RGB pixels of a base64 image, as a numpy array."""
    import numpy as np
    from PIL import Image

    text = b64.split(",", 1)[1] if b64.startswith("data:") else b64
    return np.array(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))
