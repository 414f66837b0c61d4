"""JSON over HTTP with ``urllib`` (thread-safe: one connection per call), and the resident memory
of the WebUI process from ``/proc`` (Linux)."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Answer:
    status: int  # 0: no answer (connection error or timeout)
    body: Any  # parsed JSON, or the text when it is not JSON
    seconds: float

    @property
    def detail(self) -> str:
        """The ``detail`` of an error answer, or the whole text."""
        if isinstance(self.body, dict):
            return str(self.body.get("detail") or self.body.get("error") or self.body)
        return str(self.body)[:2000]


class Http:
    def __init__(self, url: str, auth: str | None = None, timeout: float = 900.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Accept": "application/json"}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (OSError, urllib.error.URLError) as err:
            return Answer(0, f"{type(err).__name__}: {err}", time.perf_counter() - start)
        took = time.perf_counter() - start
        try:
            parsed: Any = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return Answer(status, parsed, took)

    def get(self, path: str, timeout: float | None = None) -> Answer:
        return self.call("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Answer:
        return self.call("POST", path, {} if body is None else body, timeout=timeout)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (``VmRSS``), or ``None`` where ``/proc`` cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def pid_listening_on(port: int) -> int | None:
    """The process holding the listening socket on ``port`` (Linux ``/proc``; our own user's or
    any, as permissions allow), or ``None``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None
