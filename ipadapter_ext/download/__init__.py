"""Download the official IP-Adapter and CLIP-vision files, checked by SHA-256.

    python -m ipadapter_ext.download --list
    python -m ipadapter_ext.download ip-adapter_sd15.safetensors clip_vision_h.safetensors
    python -m ipadapter_ext.download NAME --models-dir /path/to/webui/models
    python -m ipadapter_ext.download NAME --dir /some/folder

Only files in :data:`ipadapter_ext.core.load.known_models.KNOWN_MODELS` can be fetched, from their
publisher's Hugging Face repository. The transfer streams into ``<name>.part`` next to the final
file; an interrupted transfer is resumed with an HTTP Range request on the next run. The file gets
its final name (``os.replace``, atomic) only once its size and SHA-256 match the list, so the
WebUI never sees a half-written or wrong model. Standard library only: this runs before any of the
WebUI's packages are installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..core.errors import IPAdapterError
from ..core.load.known_models import KnownModel

DEFAULT_BASE_URL = "https://huggingface.co"
CHUNK_SIZE = 1 << 20
USER_AGENT = "sd-webui-ipadapter-downloader"

#: ``progress(done_bytes, total_bytes)``; ``total_bytes`` is ``None`` when neither the list nor the
#: server says how large the file is.
Progress = Callable[[int, int | None], None]

_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(IPAdapterError):
    """A download failed; the message says why and what to do."""


class HashMismatchError(DownloadError):
    """The downloaded bytes are not the file in the list; nothing was kept."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{name}: SHA-256 mismatch: expected {expected}, got {actual}. The download was deleted; "
            "run the command again to fetch it from scratch. If it keeps failing, the source or a "
            "proxy in between is serving a different file."
        )
        self.name, self.expected, self.actual = name, expected, actual


class IncompleteDownloadError(DownloadError):
    """The transfer stopped early; the partial file is kept so the next run resumes it."""

    def __init__(self, name: str, part: Path, received: int, expected: int | None, reason: str = "") -> None:
        of = f" of {expected}" if expected is not None else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{name}: the transfer stopped after {received}{of} bytes{why}. The partial file is kept at "
            f"{part}; run the same command again to resume the download."
        )
        self.name, self.part, self.received, self.expected = name, part, received, expected


# -- checks -----------------------------------------------------------------------------------
def _check_file_name(name: str) -> None:
    """A bare file name: no folders, no way out of the destination folder."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or (os.sep in name)
        or (os.altsep is not None and os.altsep in name)
        or name != name.strip()
        or name.startswith(".")
        or Path(name).name != name
    )
    if bad:
        raise DownloadError(f"refusing the file name {name!r}: it must be a plain file name without folders")


def _check_source(model: KnownModel) -> None:
    if not _REPO.fullmatch(model.repo) or ".." in model.repo:
        raise DownloadError(f"{model.name}: invalid repository {model.repo!r}")
    parts = model.path.split("/")
    if not model.path or "\\" in model.path or any(p in ("", ".", "..") for p in parts) or "\0" in model.path:
        raise DownloadError(f"{model.name}: invalid path in the repository {model.path!r}")


def file_url(model: KnownModel, base_url: str = DEFAULT_BASE_URL) -> str:
    """``<base_url>/<repo>/resolve/main/<path>``, the Hugging Face download address."""
    parsed = urllib.parse.urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DownloadError(f"the base URL must be an http(s) address, got {base_url!r}")
    _check_source(model)
    return f"{base_url.rstrip('/')}/{model.repo}/resolve/main/{urllib.parse.quote(model.path, safe='/')}"


def sha256_of(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def target_dir(model: KnownModel, models_dir: Path) -> Path:
    """The WebUI folder for the model's kind: ``models/ipadapter`` or ``models/clip_vision``."""
    return Path(models_dir) / model.folder


# -- download ---------------------------------------------------------------------------------
def download(
    model: KnownModel,
    dest_dir: Path,
    *,
    base_url: str = DEFAULT_BASE_URL,
    timeout: float = 60,
    progress: Progress | None = None,
) -> Path:
    """Fetch ``model`` into ``dest_dir / model.name`` and return that path.

    An existing file with the right hash is kept as it is (nothing is fetched); one with another
    hash is replaced. Raises :class:`HashMismatchError` (nothing kept),
    :class:`IncompleteDownloadError` (``.part`` kept for a resume) or :class:`DownloadError`.
    """
    path, _fetched = _download(model, Path(dest_dir), base_url=base_url, timeout=timeout, progress=progress)
    return path


def _download(
    model: KnownModel, dest_dir: Path, *, base_url: str, timeout: float, progress: Progress | None
) -> tuple[Path, bool]:
    _check_file_name(model.name)
    url = file_url(model, base_url)
    expected_hash = model.sha256.lower()

    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    final = root / model.name
    part = root / (model.name + ".part")
    if final.parent != root or part.parent != root:  # belt and braces after the name check
        raise DownloadError(f"refusing to write {model.name!r} outside {root}")

    if final.is_symlink() or final.exists():
        if not final.is_file():
            raise DownloadError(f"{final} exists and is not a regular file; move it away first")
        same_size = model.size is None or final.stat().st_size == model.size
        if same_size and sha256_of(final) == expected_hash:
            return final, False  # already complete: never overwritten

    if part.is_symlink():  # only ever a plain file of ours; never write through a link
        part.unlink()

    for attempt in range(2):
        offset = part.stat().st_size if part.is_file() else 0
        if model.size is not None and offset > model.size:
            part.unlink()
            offset = 0
        if model.size is not None and offset == model.size:
            break  # a previous run got every byte; only the checks are left
        try:
            _fetch(model, url, part, offset, timeout, progress)
            break
        except _RangeNotSatisfiable:
            # The partial file is not a prefix the server can continue (e.g. already complete
            # when the size is not listed, or the file changed): start again from zero once.
            part.unlink(missing_ok=True)
            if attempt:
                raise DownloadError(f"{model.name}: the server refused the byte range twice ({url})") from None

    _finish(model, part, final, expected_hash)
    return final, True


class _RangeNotSatisfiable(Exception):
    pass


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # redirects keep the Range header
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            raise _RangeNotSatisfiable from None
        hint = " (check the name and the base URL)" if e.code == 404 else ""
        raise DownloadError(f"the server answered {e.code} {e.reason} for {url}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {url}: {reason}. Check the connection and run it again.") from None


def _fetch(model: KnownModel, url: str, part: Path, offset: int, timeout: float, progress: Progress | None) -> None:
    """One request: append to (206) or restart (200) ``part``; raises when bytes are missing."""
    with contextlib.closing(_open(url, offset, timeout)) as response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        start = 0
        total: int | None
        if status == 206 and offset:
            match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if not match or int(match.group(1)) != offset:
                raise DownloadError(f"{model.name}: the server sent a byte range that does not continue the download")
            start = offset
            total = int(match.group(3)) if match.group(3) != "*" else None
        elif status == 200:
            total = length  # the server ignored the range (or none was asked): start from zero
        else:
            raise DownloadError(f"{model.name}: unexpected answer {status} from {url}")
        if total is None and length is not None:
            total = start + length
        if model.size is not None and total is not None and total != model.size:
            raise DownloadError(
                f"{model.name}: the server offers {total} bytes but the file should have {model.size}; "
                f"not downloading ({url})"
            )
        expected_total = model.size if model.size is not None else total

        received = start
        with open(part, "ab" if start else "wb") as out:  # "wb" drops whatever was there
            if progress:
                progress(received, expected_total)
            reason = ""
            while True:
                try:
                    block = response.read(CHUNK_SIZE)
                except http.client.IncompleteRead as e:
                    out.write(e.partial)
                    received += len(e.partial)
                    reason = "connection closed early"
                    break
                except OSError as e:  # timeouts, resets
                    reason = str(e) or type(e).__name__
                    break
                if not block:
                    break
                if expected_total is not None and received + len(block) > expected_total:
                    out.close()
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{model.name}: the server sent more than {expected_total} bytes; discarded")
                out.write(block)
                received += len(block)
                if progress:
                    progress(received, expected_total)
            out.flush()
            os.fsync(out.fileno())

    if expected_total is not None and received < expected_total:
        raise IncompleteDownloadError(model.name, part, received, expected_total, reason or "connection closed early")
    if reason:  # no length to compare against, but the read itself failed
        raise IncompleteDownloadError(model.name, part, received, expected_total, reason)


def _finish(model: KnownModel, part: Path, final: Path, expected_hash: str) -> None:
    size = part.stat().st_size
    if model.size is not None and size != model.size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{model.name}: got {size} bytes, expected {model.size}; deleted, run it again")
    actual = sha256_of(part)
    if actual != expected_hash:
        part.unlink(missing_ok=True)
        raise HashMismatchError(model.name, expected_hash, actual)
    os.replace(part, final)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
