"""Run the end-to-end suite once per memory flag against an existing WebUI install, and print a
pass/fail/skip table per test file and flag.

    python -m tests.e2e.gpu_matrix --root /path/to/stable-diffusion-webui [--flags …] [-- pytest args]

Meant for a machine with a GPU, where the WebUI moves models between devices (A1111's
``--medvram``/``--lowvram``/``--medvram-sdxl``, Forge's memory management) and a tensor on the wrong
device fails a request. The install must already exist (this repository never builds one: set it
up as README's install section says); everything else is the suite's own doing: each run starts
the WebUI from ``--root`` with ``WEBUI_ARGS`` = ``--base-args`` + the flag, writes the tiny models
into it, runs every test file, stops it and removes what it wrote. Per flag the pytest output,
its JUnit XML and the probe report (``test_webui_memory.py``: where the model is, VRAM) go to
``--out``.

Default flags: A1111 ``plain``, ``--medvram-sdxl``, ``--lowvram``, ``--medvram``; Forge (which
ignores those) ``plain``, ``--always-low-vram``, ``--always-offload-from-vram``. ``plain`` means
no flag. ``--dry-run`` prints what would run and the empty table, and runs nothing (CI checks it).
Exit status: 0 when every run passed (skips allowed), 1 when a test failed or a run broke, 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
A1111_FLAGS = ("plain", "--medvram-sdxl", "--lowvram", "--medvram")
FORGE_FLAGS = ("plain", "--always-low-vram", "--always-offload-from-vram")
PLAIN = "plain"
#: Seconds a timed-out run gets to stop its WebUI and clean up after Ctrl+C.
STOP_GRACE_S = 180.0


@dataclass
class FileResult:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def cell(self) -> str:
        return f"{self.passed}/{self.failed}/{self.skipped}"


@dataclass
class FlagRun:
    flag: str
    command: list[str]
    env: dict[str, str]
    junit: Path
    log: Path
    report: Path
    files: dict[str, FileResult] = field(default_factory=dict)
    returncode: int | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def failed(self) -> bool:
        broken = self.returncode not in (0, None) and not any(r.failed for r in self.files.values())
        return broken or any(r.failed for r in self.files.values())


def is_forge(root: Path) -> bool:
    return (root / "modules_forge").is_dir() or (root / "backend" / "loader.py").is_file()


def plan(root: Path, flags: Sequence[str], base_args: str, out: Path, pytest_args: Sequence[str]) -> list[FlagRun]:
    runs = []
    for flag in flags:
        slug = "plain" if flag == PLAIN else flag.lstrip("-").replace("=", "_").replace(" ", "_")
        args = base_args if flag == PLAIN else f"{base_args} {flag}".strip()
        junit, log, report = out / f"{slug}.xml", out / f"{slug}.log", out / f"{slug}.json"
        env = {"WEBUI_ROOT": str(root), "WEBUI_ARGS": args, "WEBUI_E2E_REPORT": str(report)}
        # test files or node ids among the pytest arguments replace the whole suite
        chosen = [] if any(a.startswith("tests/") for a in pytest_args) else ["tests/e2e"]
        command = [
            sys.executable, "-m", "pytest", *chosen, "-q", "-ra", "-p", "no:cacheprovider",
            f"--junitxml={junit}", *pytest_args,
        ]  # fmt: skip
        runs.append(FlagRun(flag, command, env, junit, log, report))
    return runs


def read_junit(path: Path) -> dict[str, FileResult]:
    """Per test file (``tests/e2e/test_x.py``), how many passed, failed (or errored) and skipped."""
    results: dict[str, FileResult] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").split("::")[0]
        name = module.replace(".", "/") + ".py" if module else case.get("file", "?")
        result = results.setdefault(name, FileResult())
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed += 1
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.passed += 1
    return results


def run(flag_run: FlagRun, timeout: float) -> None:
    env = {**os.environ, **flag_run.env}
    start = time.monotonic()
    with open(flag_run.log, "wb") as log:
        proc = subprocess.Popen(flag_run.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            flag_run.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            flag_run.returncode, flag_run.note = 124, f"timed out after {timeout:.0f} s"
    flag_run.seconds = time.monotonic() - start
    if flag_run.junit.is_file():
        flag_run.files = read_junit(flag_run.junit)
    elif not flag_run.note:
        flag_run.note = f"no JUnit report (pytest exit {flag_run.returncode}); see {flag_run.log}"


def stop(proc: subprocess.Popen) -> None:
    """End a pytest run that ran out of time the way Ctrl+C does, so that its fixtures stop the
    WebUI it started (in a process group of its own, which killing pytest would leave running) and
    remove what the suite wrote into the install; killed only if that takes too long."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def describe_machine(root: Path) -> list[str]:
    lines = [f"WebUI: {root} ({'Forge' if is_forge(root) else 'A1111'}, commit {git_commit(root)})"]
    lines.append(f"extension: {REPO} (commit {git_commit(REPO)})")
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        gpu = "none found (nvidia-smi)"
    lines.append(f"GPU: {gpu}")
    return lines


def git_commit(path: Path) -> str:
    try:
        return (
            subprocess.run(
                ["git", "-C", str(path), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def probe_summary(report: Path) -> str:
    """What test_webui_memory.py found: lowvram engaged, where the UNet was, VRAM growth."""
    if not report.is_file():
        return "-"
    data = json.loads(report.read_text())
    probe = data.get("probe", {})
    parts = []
    if probe:
        parts.append(f"lowvram={'on' if probe.get('lowvram') else 'off'}")
        parts.append(f"device={probe.get('device')}")
    vram = data.get("vram")
    if vram:
        parts.append(f"VRAM +{vram['grown'] / 2**20:.1f} MiB after a unit")
    return ", ".join(parts) or "-"


def table(runs: Sequence[FlagRun]) -> str:
    """Test files × flags: ``passed/failed/skipped``; then totals, time and the probe's findings."""
    files = sorted({name for r in runs for name in r.files})
    heads = [r.flag for r in runs]
    width = max([len("test file"), *map(len, files), len("total"), len("probe")])
    cols = [max(len(h), 11) for h in heads]
    lines = ["  ".join(["test file".ljust(width), *(h.ljust(c) for h, c in zip(heads, cols, strict=True))])]
    lines.append("  ".join(["-" * width, *("-" * c for c in cols)]))
    for name in files:
        cells = [(r.files[name].cell() if name in r.files else "-").ljust(c) for r, c in zip(runs, cols, strict=True)]
        lines.append("  ".join([name.ljust(width), *cells]))
    totals = []
    for r in runs:
        total = FileResult(*(sum(getattr(f, k) for f in r.files.values()) for k in ("passed", "failed", "skipped")))
        totals.append(total.cell() if r.files else (r.note or "not run")[:40])
    lines.append("  ".join(["total".ljust(width), *(t.ljust(c) for t, c in zip(totals, cols, strict=True))]))
    seconds = [f"{r.seconds:.0f} s" if r.returncode is not None else "-" for r in runs]
    lines.append("  ".join(["time".ljust(width), *(s.ljust(c) for s, c in zip(seconds, cols, strict=True))]))
    lines.append("(cells: passed/failed/skipped)")
    for r in runs:
        lines.append(f"{r.flag}: WEBUI_ARGS={r.env['WEBUI_ARGS']!r}; probe: {probe_summary(r.report)}")
    return "\n".join(lines)


def glue_dashed_values(argv: list[str]) -> list[str]:
    """``--flags --medvram`` as ``--flags=--medvram`` (likewise ``--base-args``): argparse takes a
    value that starts with a dash for another option, and these values are WebUI options."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in ("--flags", "--base-args") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    argv = glue_dashed_values(argv)
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.gpu_matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.environ.get("WEBUI_ROOT"), help="the WebUI install folder (WEBUI_ROOT)")
    parser.add_argument("--flags", help="comma-separated flags, 'plain' for none (default: per host, see above)")
    parser.add_argument("--base-args", default=os.environ.get("WEBUI_ARGS", ""), help="WEBUI_ARGS for every run")
    parser.add_argument("--out", default=None, help="folder for logs and reports (default: a new temp folder)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per flag (default 3600)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the empty table; run nothing")
    return parser.parse_args(argv), extra


def main(argv: Sequence[str] | None = None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.root:
        print("gpu_matrix: give --root (or WEBUI_ROOT): an existing WebUI install folder", file=sys.stderr)
        return 2
    root = Path(args.root).expanduser().resolve()
    if not (root / "launch.py").is_file():
        print(f"gpu_matrix: {root} has no launch.py: not a WebUI install folder", file=sys.stderr)
        return 2
    flags = (
        [f.strip() for f in args.flags.split(",")]
        if args.flags
        else list(FORGE_FLAGS if is_forge(root) else A1111_FLAGS)
    )
    bad = [f for f in flags if f != PLAIN and not f.startswith("--")]
    if bad or not flags:
        print(f"gpu_matrix: flags must be 'plain' or start with '--': {bad}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(os.environ.get("TMPDIR", "/tmp")) / f"ipadapter-gpu-matrix-{os.getpid()}"
    runs = plan(root, flags, args.base_args, out, pytest_args)
    print("\n".join(describe_machine(root)))
    for r in runs:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in r.env.items())
        print(f"[{r.flag}] {env} {shlex.join(r.command)}  (log: {r.log})")
    if args.dry_run:
        print(table(runs))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        print(f"[{r.flag}] running …", flush=True)
        run(r, args.timeout)
        print(f"[{r.flag}] exit {r.returncode} in {r.seconds:.0f} s {r.note}".rstrip(), flush=True)
    print(table(runs))
    return 1 if any(r.failed for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
