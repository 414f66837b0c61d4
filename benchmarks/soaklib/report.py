"""The run as Markdown tables (for the terminal and the README), as JSON, and as a PNG plot."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from .checks import MIB, Check, floors
from .runner import Record

_UNITS = re.compile(r" \((\d+) units\)$")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def base_kind(kind: str) -> str:
    return _UNITS.sub("", kind)


def memory_points(samples: list[tuple[int, int]], total: int, points: int = 10) -> list[tuple[int, float]]:
    """(requests answered, MiB) at the first sample and every ``total / points`` requests."""
    if not samples:
        return []
    marks = sorted({max(1, round(total * i / points)) for i in range(points + 1)})
    out = [(samples[0][0], samples[0][1] / MIB)]
    for mark in marks:
        hit = next(((done, rss) for done, rss in samples if done >= mark), None)
        if hit is not None and hit[0] != out[-1][0]:
            out.append((hit[0], hit[1] / MIB))
    if samples[-1][0] != out[-1][0]:
        out.append((samples[-1][0], samples[-1][1] / MIB))
    return out


def markdown(meta: dict, records: list[Record], events: Counter, samples: list[tuple[int, int]],
             checks: list[Check]) -> str:  # fmt: skip
    lines = [f"### {meta.get('title', 'Soak run')}", ""]
    lines += [f"{k}: {v}  " for k, v in meta.items() if k != "title"]
    lines += ["", "| kind | requests | as meant | wrong | p50 s | p95 s |", "|---|---:|---:|---:|---:|---:|"]
    by_kind: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_kind[base_kind(r.kind)].append(r)
    for kind in sorted(by_kind, key=lambda k: (-len(by_kind[k]), k)):
        rs = by_kind[kind]
        times = [r.seconds for r in rs]
        good = sum(r.ok and r.same_pixels is not False for r in rs)
        lines.append(f"| {kind} | {len(rs)} | {good} | {len(rs) - good} | {percentile(times, 0.5):.2f} | "
                     f"{percentile(times, 0.95):.2f} |")  # fmt: skip
    units = Counter(int(m.group(1)) for r in records if (m := _UNITS.search(r.kind)))
    if units:
        lines += ["", "Units per generation: " + ", ".join(f"{n}: {units[n]}" for n in sorted(units))]
    statuses = Counter(r.status for r in records)
    lines += ["", "HTTP statuses: " + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(statuses.items()))]
    wrong = Counter((base_kind(r.kind), (r.problem or "pixels differ").split(":")[0][:80]) for r in records
                    if not r.ok or r.same_pixels is False)  # fmt: skip
    if wrong:
        lines += ["", "| errors by kind | problem | count |", "|---|---|---:|"]
        lines += [f"| {k} | {p} | {n} |" for (k, p), n in sorted(wrong.items())]
    if events:
        lines += ["", "Events: " + ", ".join(f"{name} {n}" for name, n in sorted(events.items()))]
    points = memory_points(samples, len(records))
    if points:
        lines += ["", "| after request | " + " | ".join(str(d) for d, _ in points) + " |",
                  "|---|" + "---:|" * len(points),
                  "| resident MiB | " + " | ".join(f"{m:.0f}" for _, m in points) + " |"]  # fmt: skip
    lines += ["", "| invariant | result | evidence |", "|---|---|---|"]
    for c in checks:
        result = "pass" if c.passed else ("FAIL" if c.passed is False else "not checked")
        lines.append(f"| {c.name} | {result} | {c.evidence.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_json(path: Path, meta: dict, records: list[Record], events: Counter, samples: list[tuple[int, int]],
               checks: list[Check]) -> None:  # fmt: skip
    data = {
        "meta": meta,
        "records": [asdict(r) for r in records],
        "events": dict(events),
        "memory": samples,
        "checks": [asdict(c) for c in checks],
    }
    path.write_text(json.dumps(data, indent=1))


def plot(path: Path, samples: list[tuple[int, int]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot([d for d, _ in samples], [rss / MIB for _, rss in samples], lw=1.2, label="sampled")
    for first, last, floor in floors(samples, samples[-1][0]):
        if floor is not None:
            ax.hlines(floor / MIB, first, last, colors="tab:red", lw=1.5, label="floor of each sixth"
                      if first == 1 else None)  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("requests answered")
    ax.set_ylabel("WebUI resident memory (MiB)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
