"""The invariants a run must keep, each a :class:`Check` with its result and the evidence.

* every request got 200, or the 422 it was meant to get (never a 500, never no answer);
* the fixed no-unit baseline, every 10th request, is pixel-identical to its first answer
  (no hook, LoRA or patch left behind), and so is the fixed one-unit request (no stale cache);
* the baseline right after each interrupt and each checkpoint switch is identical too;
* the WebUI's resident memory over the last sixth of the requests stays within ``margin`` of
  the memory over the second sixth (requests 51-100 of 300), while the reference pool passes
  through (see :func:`memory` for why whole windows, not single samples, are compared);
* no "Traceback" in the server log written during the run (no request of the run is meant to
  cause one: the 422s of malformed units print none);
* every cache the extension reports stays within its bound, and no K/V is held between
  generations once the run is over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .runner import Record

MIB = 2**20


@dataclass
class Check:
    name: str
    passed: bool | None  # None: could not be checked (said in ``evidence``)
    evidence: str


def answers(records: list[Record]) -> Check:
    bad = [r for r in records if not r.ok]
    if not bad:
        return Check("every request answered 200 or its intended 422", True, f"{len(records)} answers")
    shown = "; ".join(f"#{r.index} {r.kind}: {r.problem}" for r in bad[:5])
    return Check("every request answered 200 or its intended 422", False, f"{len(bad)} wrong: {shown}")


def identical(records: list[Record], kinds: tuple[str, ...], name: str) -> Check:
    runs = [r for r in records if r.kind in kinds and r.status == 200]
    if not runs:
        return Check(name, None, "none ran")
    differ = [r for r in runs if r.same_pixels is False]
    if differ:
        return Check(name, False, f"{len(differ)} of {len(runs)} differ, first at request #{differ[0].index}")
    return Check(name, True, f"{len(runs)} identical")


def floors(samples: list[tuple[int, int]], total: int, parts: int = 6) -> list[tuple[int, int, int | None]]:
    """(first request, last request, lowest resident bytes sampled) for each of ``parts`` equal
    windows of the run; ``None`` where a window holds no sample."""
    out = []
    for k in range(parts):
        first, last = k * total // parts + 1, (k + 1) * total // parts
        inside = [rss for done, rss in samples if first <= done <= last]
        out.append((first, last, min(inside) if inside else None))
    return out


def memory(samples: list[tuple[int, int]], total: int, margin: int) -> tuple[Check, int | None, int | None]:
    """(check, the floor of the second sixth of the run, the floor of the last sixth).

    A single sample between requests also sees what is only passing through: another client's
    request in flight, a checkpoint the host has loaded beside the current one and not yet let
    go (Forge keeps both for a while after a switch), free memory the allocator has not yet
    handed back. Those come and go; a leak does not. Memory kept per request is in every sample
    taken after it, so it lifts the lowest sample of a window, and only a leak can lift the
    floor of the last window above that of an early one. Hence the floors are compared, from
    the second window on (the first still holds the warm-up's first loads)."""
    windows = floors(samples, total)
    early, late = windows[1], windows[-1]
    reference, last = early[2], late[2]
    name = (f"memory floor of requests {late[0]}-{late[1]} within {margin / MIB:.0f} MiB "
            f"of that of requests {early[0]}-{early[1]}")  # fmt: skip
    if not samples:
        return Check(name, None, "not measured (no process id; pass --pid, or run on the server's machine)"), None, None
    if reference is None or last is None:
        return Check(name, None, f"too few samples ({len(samples)}) for {total} requests"), reference, last
    growth = last - reference
    shown = ", ".join(f"{f / MIB:.0f}" if f is not None else "-" for _, _, f in windows)
    evidence = f"{reference / MIB:.0f} → {last / MIB:.0f} MiB ({growth / MIB:+.0f} MiB); floors by sixth: {shown} MiB"
    return Check(name, growth <= margin, evidence), reference, last


def tracebacks(log: Path | None, offset: int) -> Check:
    name = "no Traceback in the server log"
    if log is None:
        return Check(name, None, "no log (pass --log with the server's console log)")
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return Check(name, None, f"cannot read {log}: {exc}")
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if "Traceback" in line]
    if not found:
        return Check(name, True, f"{len(lines)} lines written during the run, none with a Traceback")
    first = found[0]
    excerpt = " | ".join(line.strip() for line in lines[max(0, first - 2) : first + 12] if line.strip())[:700]
    return Check(name, False, f"{len(found)} Traceback(s); first: {excerpt}")


def caches(reports: list[dict], final: dict | None) -> Check:
    name = "caches within their bounds; no K/V held after the run"
    seen = [*reports, *([final] if final else [])]
    if not seen:
        return Check(name, None, "no cache report (the extension is older than GET /ipadapter/v1/cache)")
    over = []
    for report in seen:
        for cache, values in report.items():
            bound = values.get("max_entries") if isinstance(values, dict) else None
            if bound is not None and values.get("entries", 0) > bound:
                over.append(f"{cache} {values['entries']} > {bound}")
    if final and final.get("kv", {}).get("entries"):
        over.append(f"K/V of {final['kv']['entries']} units still held after the run")
    if over:
        return Check(name, False, "; ".join(over[:5]))
    held = ", ".join(f"{k} {v.get('entries', 0)}" for k, v in (final or {}).items() if isinstance(v, dict))
    return Check(name, True, f"{len(seen)} reports; at the end: {held}")
