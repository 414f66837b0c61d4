"""The invariants a run must keep, each a :class:`Check` with its result and the evidence.

* every request got 200, or the 422 it was meant to get (never a 500, never no answer);
* the fixed no-unit baseline, every 10th request, is pixel-identical to its first answer
  (no hook, LoRA or patch left behind), and so is the fixed one-unit request (no stale cache);
* the baseline right after each interrupt and each checkpoint switch is identical too;
* the WebUI's resident memory after the last request is within ``margin`` of the memory after
  the first sixth (request 50 of 300), while the reference pool passes through;
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


def memory(samples: list[tuple[int, int]], total: int, margin: int) -> tuple[Check, int | None, int | None]:
    """(check, resident bytes after the first sixth of the requests, after the last)."""
    name = f"memory after the last request within {margin / MIB:.0f} MiB of after request {max(1, total // 6)}"
    if not samples:
        return Check(name, None, "not measured (no process id; pass --pid, or run on the server's machine)"), None, None
    reference = next((rss for done, rss in samples if done >= max(1, total // 6)), samples[0][1])
    last = samples[-1][1]
    growth = last - reference
    evidence = f"{reference / MIB:.0f} → {last / MIB:.0f} MiB ({growth / MIB:+.0f} MiB)"
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
