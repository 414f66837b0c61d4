"""Helpers for the opt-in end-to-end suite: tiny model files sized to a checkpoint, and a WebUI
process started from an install folder (its HTTP client is in ``http_client.py``).

Nothing here is imported from the WebUI, and nothing beyond the standard library is imported at
module level: the normal test run collects this package and skips it without a WebUI. The model
writers import torch, safetensors and the test factories only when they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .http_client import Client

REPO = Path(__file__).resolve().parents[2]
EXTENSION_DIR_NAME = "sd-webui-ipadapter"
SCRIPT_TITLE = "IP-Adapter"

#: What every skip says when neither variable is set.
ENABLE_HINT = (
    "end-to-end WebUI tests are opt-in: set WEBUI_URL=http://127.0.0.1:7860 (a running WebUI started with "
    "--api and this extension) or WEBUI_ROOT=/path/to/stable-diffusion-webui"
)

#: Names of the files the fixture writes into a WebUI install (distinct from anyone's real models).
ADAPTER_FILE = "e2e-tiny-plus.safetensors"
ENCODER_FILE = "e2e-tiny-clip.safetensors"

START_TIMEOUT_S = float(os.environ.get("WEBUI_START_TIMEOUT", "300"))
#: what A1111 and every Forge print when a script raises at import (``modules/scripts.py``).
SCRIPT_FAILED = "Error loading script: ipadapter.py"
STARTED_LINE = "Startup time:"  # what every WebUI prints once its API and app_started callbacks are in
STOP_TIMEOUT_S = 30.0

_ATTN2_K = re.compile(r"^(?P<module>.*\.transformer_blocks\.\d+\.attn2)\.to_k\.weight$")


# ------------------------------------------------------------------------------------- model files


def find_checkpoint(root: Path) -> Path:
    """``WEBUI_CKPT``, or the only ``.safetensors`` in ``models/Stable-diffusion``."""
    given = os.environ.get("WEBUI_CKPT")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"WEBUI_CKPT={given}: no such file")
        return path
    folder = root / "models" / "Stable-diffusion"
    found = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(
            f"expected exactly one .safetensors checkpoint in {folder}, found {len(found)}; "
            "set WEBUI_CKPT=/path/to/checkpoint.safetensors"
        )
    return found[0]


def checkpoint_attn2(path: Path) -> tuple[int, tuple[int, ...]]:
    """(context width, attn2 inner widths in adapter key order) read from an LDM checkpoint's
    ``attn2.to_k`` weights, without loading the tensors."""
    from safetensors import safe_open

    from ipadapter_ext.core.attend.layers import map_ldm_attn2

    shapes: dict[str, tuple[int, ...]] = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            m = _ATTN2_K.match(key)
            if m and key.startswith("model.diffusion_model."):
                shapes[m.group("module")] = tuple(f.get_slice(key).get_shape())
    if not shapes:
        raise ValueError(f"{path.name}: no model.diffusion_model.*.attn2.to_k.weight tensors (not an LDM UNet?)")
    slots = map_ldm_attn2(shapes)
    contexts = {shape[1] for shape in shapes.values()}
    if len(contexts) != 1:
        raise ValueError(f"{path.name}: attn2 layers disagree on the context width: {sorted(contexts)}")
    return contexts.pop(), tuple(shapes[slot.name][0] for slot in slots)


#: SD1.5's (context width, attn2 widths in adapter key order): the tiny SD adapter's size when the
#: checkpoint is a Flux, where it only has to be a valid SD adapter (test_webui_flux.py expects a 422)
SD15_ATTN2 = (768, (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320))

FLUX_KEY = "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale"


def is_flux_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds a Flux transformer (the key Forge's loader tests), read without loading it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return FLUX_KEY in set(f.keys())


def new_dirs(path: Path) -> list[Path]:
    """Create folder ``path`` with its missing parents; returns the folders created, outermost
    first, so that a session can remove exactly those afterwards (an install is left as found)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir()
    return list(reversed(missing))


def write_tiny_models(root: Path, checkpoint: Path) -> list[Path]:
    """A random resampler ("plus") adapter sized to ``checkpoint`` (to SD1.5 when it is a Flux) and
    a tiny CLIP vision encoder, written (atomically) under the install's ``models/``. Returns the
    paths written, with the folders created for them before their files."""
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.factories import adapter_shapes, adapter_tensors
    from tests.test_encoder import _save, _tiny_model

    ctx, widths = SD15_ATTN2 if is_flux_checkpoint(checkpoint) else checkpoint_attn2(checkpoint)
    adapter = root / "models" / "ipadapter" / ADAPTER_FILE
    encoder = root / "models" / "clip_vision" / ENCODER_FILE
    created = [d for path in (adapter, encoder) for d in new_dirs(path.parent)]
    shapes = adapter_shapes("resampler", ctx, widths, 128, tokens=4, res_dim=32, inner=64)
    tmp = adapter.with_name(adapter.name + ".part.safetensors")
    save_adapter_tensors(adapter_tensors(shapes, seed=0), tmp)
    os.replace(tmp, adapter)
    tmp = encoder.with_name(encoder.name + ".part.safetensors")
    _save(_tiny_model(), tmp)
    os.replace(tmp, encoder)
    return [*created, adapter, encoder]


def remove_created(created: list[Path]) -> None:
    """Remove what a session created, last first: files and links, then the folders made for them
    once empty (a folder the WebUI has put something of its own into stays)."""
    for path in reversed(created):
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            with contextlib.suppress(OSError):
                path.rmdir()


def link_extension(root: Path) -> list[Path]:
    """Symlink this repository into ``extensions/``; returns what was created here (the link, and
    ``extensions/`` itself when the install had none), nothing when a link was there already."""
    link = root / "extensions" / EXTENSION_DIR_NAME
    if link.exists() or link.is_symlink():
        return []
    created = new_dirs(link.parent)
    link.symlink_to(REPO, target_is_directory=True)
    return [*created, link]


# ------------------------------------------------------------------------------------ WebUI process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str] | None:
    """The local addresses of the TCP sockets listening on ``port`` (from Linux's /proc/net/tcp and
    tcp6), e.g. ``{"127.0.0.1"}``; ``None`` where /proc has no such table."""
    import ipaddress

    found: set[str] = set()
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        return None
    for table in tables:
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found.add(str(ip))
    return found


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def accepts_flag(root: Path, flag: str) -> bool:
    """Whether the install's launcher defines ``flag`` (ersatzForge dropped ``--ckpt``, and its
    parser ignores unknown flags, so passing it would silently do nothing)."""
    try:
        return f'"{flag}"' in (root / "modules" / "cmd_args.py").read_text(errors="replace")
    except OSError:
        return True


def checkpoint_setting(root: Path, checkpoint: Path) -> str | None:
    """``checkpoint``'s name as the WebUI lists it (relative to ``models/Stable-diffusion``), or
    ``None`` when it lies elsewhere."""
    folder = (root / "models" / "Stable-diffusion").resolve()
    try:
        return checkpoint.resolve().relative_to(folder).as_posix()
    except ValueError:
        return None


class WebUIProcess:
    """``launch.py --api`` on a free port, listening on 127.0.0.1 only (also with ``--nowebui``, where
    the WebUI would otherwise start uvicorn on every interface), in its own process group, logging
    to a file.

    The checkpoint is chosen twice over, so that every host loads it: with ``--ckpt`` where the
    launcher has it, and as ``sd_model_checkpoint`` in the fresh ``config.json`` (what ersatzForge,
    which has no ``--ckpt``, reads; the file must then lie in ``models/Stable-diffusion``).
    """

    def __init__(
        self, root: Path, log_path: Path, checkpoint: Path | None = None, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.root = root
        self.log_path = log_path
        #: a fresh, private ui-config.json and config.json: what a new user has, and nothing the
        #: suite does (options it sets, defaults it saves) leaks into the install's own files
        self.config_dir = log_path.parent
        self.python = os.environ.get("WEBUI_PYTHON") or str(root / "venv" / "bin" / "python")
        extra = shlex.split(os.environ.get("WEBUI_ARGS", "")) + list(extra_args)
        forbidden = [a for a in extra if a.split("=")[0] in ("--listen", "--port", "--server-name")]
        if forbidden:
            raise ValueError(f"WEBUI_ARGS must not set {forbidden}: the suite binds 127.0.0.1 on a free port itself")
        if checkpoint is not None and not any(a.split("=")[0] == "--ckpt" for a in extra):
            if accepts_flag(root, "--ckpt"):
                extra += ["--ckpt", str(checkpoint)]  # the checkpoint the adapter was sized to
            elif checkpoint_setting(root, checkpoint) is None:
                raise ValueError(
                    f"this WebUI has no --ckpt: put {checkpoint.name} in {root / 'models' / 'Stable-diffusion'} "
                    "(the suite then selects it in its fresh config.json)"
                )
        for flag, name in (("--ui-config-file", "ui-config.json"), ("--ui-settings-file", "config.json")):
            if not any(a.split("=")[0] == flag for a in extra):
                extra += [flag, str(self.config_dir / name)]
                if name == "config.json" and checkpoint is not None:
                    self._seed_settings(self.config_dir / name, root, checkpoint)
        self.port = free_port()
        if port_in_use(self.port):  # pragma: no cover - a race with another process
            raise RuntimeError(f"port {self.port} was taken before the WebUI could start")
        self.args = [
            self.python,
            "launch.py",
            "--api",
            "--port",
            str(self.port),
            "--skip-prepare-environment",
            "--skip-install",
            "--skip-torch-cuda-test",
            "--server-name",
            "127.0.0.1",
            *extra,
        ]
        self.proc: subprocess.Popen | None = None
        self._log = None

    @staticmethod
    def _seed_settings(path: Path, root: Path, checkpoint: Path) -> None:
        """A fresh config.json naming the checkpoint (kept when a second server of the session
        starts with the same file)."""
        name = checkpoint_setting(root, checkpoint)
        if name is None or path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sd_model_checkpoint": name}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if not Path(self.python).is_file():
            raise FileNotFoundError(f"WEBUI_PYTHON={self.python}: no such interpreter")
        env = dict(os.environ)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")  # the extension is this checkout: keep it clean
        env["PYTHONUNBUFFERED"] = "1"  # the log shows each line as it is printed (wait_ready reads it)
        env.pop("WEBUI_URL", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every child
        )

    def wait_ready(self, client: Client, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until ``/sdapi/v1/options`` answered 200; raises with the log tail otherwise.

        Nothing is sent before the log says "Startup time:" (every host prints it once its API
        routes and ``app_started`` callbacks are in): the page server answers earlier, and a request
        that reaches it between the WebUI's middleware reset and its API set-up makes starlette
        build the middleware stack, after which the API cannot add its own and never starts
        ("Cannot add middleware after an application has started"; seen on a slow reForge). A host
        that never prints the line is polled after 80% of the timeout."""
        assert self.proc is not None
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the WebUI exited with code {self.proc.returncode} before answering:\n{self.tail()}"
                )
            log = self.tail(chars=200_000)
            started = STARTED_LINE in log or time.monotonic() - start > 0.8 * timeout
            if STARTED_LINE in log and SCRIPT_FAILED in log:  # the host goes on without us: no route will come
                at = log.index(SCRIPT_FAILED)
                raise RuntimeError(
                    f"the WebUI started but could not load the extension's script:\n{log[at : at + 4000]}"
                )
            # the extension's routes come from an app_started callback, which runs after the API's
            if started and all(
                client.answers(path, timeout=5.0) for path in ("/sdapi/v1/options", "/ipadapter/v1/version")
            ):
                return time.monotonic() - start
            time.sleep(1.0)
        raise TimeoutError(f"the WebUI did not answer /sdapi/v1/options within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # children that outlived the leader
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:  # pragma: no cover - SIGKILL did not land
                print(f"warning: WebUI process {proc.pid} did not exit", file=sys.stderr)
        if self._log is not None:
            self._log.close()
            self._log = None
