"""Soak a running WebUI with the extension: hundreds of random requests from several clients,
with interrupts, checkpoint switches, setting changes, malformed units and model-list refreshes
between them, checking invariants as it goes (see ``soaklib/checks.py``).

    python benchmarks/soak.py --url http://127.0.0.1:7860 [--pid PID] [--log webui.log]
    python benchmarks/soak.py --webui-root /path/to/stable-diffusion-webui [--ckpt model.safetensors]

With ``--url`` it drives a WebUI you started (with ``--api``); the memory check needs the server's
process id (found from the port on Linux when it runs on this machine, else ``--pid``) and the
Traceback check its console log (``--log``). With ``--webui-root`` it writes tiny models of
every kind sized to the checkpoint (and a second checkpoint, a face pack where onnxruntime is
installed), starts the WebUI as the e2e suite does, runs, stops it and removes what it wrote.

It prints one Markdown report: requests by kind with p50/p95 latency, errors by kind, events,
the memory curve and the invariants; ``--json`` and ``--plot`` write the raw data and a PNG.
The exit status is 1 when an invariant was violated.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soaklib import checks, report
from soaklib.client import Http, pid_listening_on, rss_bytes
from soaklib.discover import discover
from soaklib.payloads import References, WithoutUnits
from soaklib.plan import WEIGHTS, draw_plan
from soaklib.runner import SETTINGS, Config, Runner, restore_settings

MIB = 2**20
#: what a control run does not draw: requests that exist only for the extension.
CONTROL_SKIPS = ("encode", "faces", "cache", "malformed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running WebUI (started with --api and this extension)")
    where.add_argument("--webui-root", type=Path, help="a WebUI folder: start it here, as the e2e suite does")
    p.add_argument("--ckpt", type=Path, help="with --webui-root: the checkpoint (else the only one there)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--interrupt-steps", type=int, default=24, help="steps of the generations that get interrupted")
    p.add_argument("--references", type=int, default=100, help="distinct reference images in the pool")
    p.add_argument("--pid", type=int, help="the WebUI's process id (memory check)")
    p.add_argument("--log", type=Path, help="the WebUI's console log (Traceback check)")
    p.add_argument("--memory-margin-mib", type=float,
                   help="allowed rise of the memory floor, last sixth vs second sixth of the requests (default: 64 MiB + 10%% of the second sixth's floor)")  # fmt: skip
    p.add_argument("--skip", action="append", default=[], choices=sorted(WEIGHTS),
                   help="a kind of request or event not to draw (repeatable), e.g. to tell what memory growth comes from")  # fmt: skip
    p.add_argument("--control", action="store_true",
                   help="send no unit at all (and no encode, faces, cache or malformed request): the host's own memory curve under the same interrupts, switches and settings")  # fmt: skip
    p.add_argument("--second-checkpoint", help="the checkpoint to switch to (default: another listed one)")
    p.add_argument("--auth", help="user:password for --api-auth")
    p.add_argument("--title", default="", help="heading of the report (e.g. the host and its commit)")
    p.add_argument("--json", type=Path, help="write every record, the memory samples and the checks here")
    p.add_argument("--plot", type=Path, help="write the memory curve as a PNG here")
    p.add_argument("--markdown", type=Path, help="write the report here as well")
    return p.parse_args(argv)


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[tuple[str, int | None, Path | None]]:
    """(url, process id, console log) of the WebUI to soak."""
    if args.url:
        port = urllib.parse.urlsplit(args.url).port or 80
        yield args.url, args.pid or pid_listening_on(port), args.log
        return
    from soaklib.webui import started

    with started(args.webui_root, args.ckpt) as (url, pid, log, second):
        if args.second_checkpoint is None:
            args.second_checkpoint = second
        yield url, pid, log


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with server(args) as (url, pid, log):
        http = Http(url, args.auth)
        version = http.get("/ipadapter/v1/version")
        if version.status != 200:
            print(f"{url}: GET /ipadapter/v1/version answered {version.status}: is the extension installed?")
            return 2
        refs = References(args.references, args.size, args.seed)
        catalog = discover(http, refs, args.size, args.steps, tuple(SETTINGS), args.second_checkpoint)
        exclude = tuple(k for k, off in (("switch", catalog.checkpoints[1] is None), ("faces", not catalog.face_models),
                                         ("setting", not catalog.settings)) if off)  # fmt: skip
        exclude += tuple(args.skip)
        if args.control:
            exclude += CONTROL_SKIPS
            catalog.face_models.clear()  # no face analysis in the warm-up either
        plan = draw_plan(args.requests, args.seed, exclude)
        config = Config(args.size, args.steps, args.interrupt_steps, args.clients)
        runner = Runner(
            WithoutUnits(http) if args.control else http,
            catalog,
            refs,
            config,
            (lambda: rss_bytes(pid)) if pid else (lambda: None),
        )
        offset = log.stat().st_size if log is not None and log.exists() else 0
        started_at = time.monotonic()
        try:
            runner.prepare()
            runner.run(plan)
        finally:
            restore_settings(http, catalog.settings)
        took = time.monotonic() - started_at
        final = http.get("/ipadapter/v1/cache")
        final_report = final.body.get("caches") if final.status == 200 else None
        total = len(runner.records)
        reference = checks.floors(runner.memory, total)[1][2] if runner.memory else None
        margin = (
            args.memory_margin_mib * MIB if args.memory_margin_mib is not None else 64 * MIB + 0.1 * (reference or 0)
        )
        memory_check, _, _ = checks.memory(runner.memory, total, int(margin))
        results = [
            checks.answers(runner.records),
            checks.identical(
                runner.records,
                ("baseline", "baseline after interrupt", "baseline after switch"),
                "no-unit baseline pixel-identical to the first",
            ),
            checks.identical(runner.records, ("fixed unit",), "fixed one-unit request pixel-identical to the first"),
            checks.identical(
                runner.records, ("baseline after interrupt",), "baseline right after an interrupt identical"
            ),
            checks.identical(
                runner.records, ("baseline after switch",), "baseline after a checkpoint switch identical"
            ),
            memory_check,
            checks.tracebacks(log, offset),
            checks.caches(runner.cache_reports, final_report),
        ]
        meta = {
            "title": args.title or f"Soak of {url}",
            "extension": version.body.get("version"),
            "requests": f"{args.requests} drawn + 2 first fixed, {total} answers recorded",
            "clients": args.clients,
            "seed": args.seed,
            "images": f"{args.size}×{args.size}, {args.steps} steps ({args.interrupt_steps} for interrupted ones)",
            "models": ", ".join(f"{n} ({m.get('kind')})" for n, m in catalog.models.items()),
            "distinct references used": len(refs.used),
            "checkpoints": " ↔ ".join(str(c) for c in catalog.checkpoints if c),
            "duration": f"{took:.0f} s",
            **({"not drawn": ", ".join(args.skip)} if args.skip else {}),
            **(
                {"control": "no IP-Adapter unit sent; no encode, faces, cache or malformed request"}
                if args.control
                else {}
            ),
        }
        text = report.markdown(meta, runner.records, runner.events.counts, runner.memory, results)
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        if args.json:
            report.write_json(args.json, meta, runner.records, runner.events.counts, runner.memory, results)
        if args.plot and runner.memory:
            report.plot(args.plot, runner.memory, meta["title"])
        return 1 if any(c.passed is False for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
