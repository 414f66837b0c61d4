"""The command line of :mod:`.download`: list, fetch and check the official files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..core.load.known_models import KNOWN_MODELS, KnownModel
from . import DEFAULT_BASE_URL, DownloadError, Progress, _download, target_dir


def _default_models_dir() -> Path | None:
    """``<webui>/models`` when this extension sits in ``<webui>/extensions/<name>``."""
    parents = Path(__file__).resolve().parents
    if len(parents) < 4 or parents[2].name != "extensions":
        return None
    candidate = parents[3] / "models"
    return candidate if candidate.is_dir() else None


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _print_list(models: Sequence[KnownModel], models_dir: Path | None, out) -> None:
    width = max(len(m.name) for m in models) if models else 4
    print(f"{'name':<{width}}  {'kind':<7}  {'size':>8}  folder", file=out)
    for m in models:
        folder = str(target_dir(m, models_dir)) if models_dir else f"models/{m.folder}"
        print(f"{m.name:<{width}}  {m.kind:<7}  {_human(m.size):>8}  {folder}", file=out)
        print(f"{'':<{width}}    {m.description}", file=out)


def _progress_printer(name: str) -> Progress | None:
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def show(done: int, total: int | None) -> None:
        percent = int(done * 100 / total) if total else -1
        if percent == last[0] and total:
            return
        last[0] = percent
        shown = f"{percent:3d}%" if total else _human(done)
        print(f"\r  {name}: {shown} of {_human(total)}", end="", file=sys.stderr, flush=True)

    return show


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ipadapter_ext.download",
        description="Download official IP-Adapter / CLIP-vision files, checked by SHA-256.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="file name(s) from --list")
    parser.add_argument("--list", action="store_true", help="show the known files and exit")
    parser.add_argument("--dir", type=Path, help="put the file(s) in this folder")
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="the WebUI's models folder; adapters go to ipadapter/, encoders to clip_vision/ "
        "(default: found when this extension is in <webui>/extensions)",
    )
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="mirror of huggingface.co (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="network timeout in seconds (default: %(default)s)")
    args = parser.parse_args(argv)

    models = tuple(KNOWN_MODELS)
    models_dir = args.models_dir or _default_models_dir()
    if args.list:
        if not models:
            print("No known models: the list is empty.", file=sys.stdout)
            return 0
        _print_list(models, models_dir, sys.stdout)
        return 0
    if not args.names:
        parser.print_usage(sys.stderr)
        print("error: give a NAME to download, or --list", file=sys.stderr)
        return 2

    by_name = {m.name: m for m in models}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        known = ", ".join(by_name) or "(none)"
        print(f"error: unknown model {', '.join(map(repr, unknown))}. Known: {known}", file=sys.stderr)
        return 2
    if args.dir is None and models_dir is None:
        print(
            "error: cannot tell where the WebUI's models folder is; pass --models-dir WEBUI/models or --dir DIR",
            file=sys.stderr,
        )
        return 2

    failed = 0
    for name in args.names:
        model = by_name[name]
        dest = args.dir if args.dir is not None else target_dir(model, models_dir)
        show = _progress_printer(name)
        try:
            path, fetched = _download(model, dest, base_url=args.base_url, timeout=args.timeout, progress=show)
        except DownloadError as e:
            if show:
                print(file=sys.stderr)
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        except OSError as e:  # the destination folder: permissions, disk full
            if show:
                print(file=sys.stderr)
            print(f"error: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        if show:
            print(file=sys.stderr)
        print(f"{'downloaded' if fetched else 'already present, hash checked'}: {path}")
    return 1 if failed else 0
