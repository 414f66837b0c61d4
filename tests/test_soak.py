"""``benchmarks/soak.py`` against the A1111 API double (``tests/doubles/a1111_api.py``), in CI: a
short seeded run (30 requests, 2 clients) keeps every invariant, and each invariant catches the
fault it is there for, planted into the server (``tests/soak_faults.py``):

* a hook left on the UNet after an interrupt → the baselines differ (and K/V stay held);
* an embedding cache keyed without the image → the fixed one-unit request differs;
* 16 MiB kept per generation → the memory check (window floors) fails.

Seed 5's plan holds 4 interrupts, a checkpoint switch, setting changes, malformed units, encode
and faces requests besides the generations (see ``benchmarks/soaklib/plan.py``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.webui import free_port

REPO = Path(__file__).resolve().parents[1]
SEED, REQUESTS, CLIENTS = 5, 30, 2


def load_soak():
    spec = importlib.util.spec_from_file_location("soak", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_soak(tmp_path: Path, fault: str = "", *extra: str) -> tuple[int, dict]:
    """Start the double (with ``fault``), soak it, stop it; (exit status, the JSON report)."""
    import json
    import urllib.request

    port = free_port()
    log = tmp_path / "server.log"
    command = [sys.executable, "-m", "tests.doubles.a1111_api", "--port", str(port), "--folder", str(tmp_path)]
    with open(log, "wb") as out:
        server = subprocess.Popen([*command, *(["--fault", fault] if fault else [])], cwd=REPO, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url + "/ipadapter/v1/version", timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the double did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        report = tmp_path / "report.json"
        args = ["--url", url, "--pid", str(server.pid), "--log", str(log), "--requests", str(REQUESTS),
                "--clients", str(CLIENTS), "--seed", str(SEED), "--json", str(report), *extra]  # fmt: skip
        status = load_soak().main(args)
        return status, json.loads(report.read_text())
    finally:
        server.terminate()
        server.wait(30)


def results(report: dict) -> dict[str, bool | None]:
    """Each check's result by its name up to " within" and without request numbers."""
    return {check["name"].split(" within")[0].rstrip("0123456789- "): check["passed"] for check in report["checks"]}


def test_a_short_seeded_soak_keeps_every_invariant(tmp_path):
    status, report = run_soak(tmp_path)
    failed = [c for c in report["checks"] if c["passed"] is False]
    assert status == 0 and not failed, failed
    assert all(c["passed"] is True for c in report["checks"]), report["checks"]  # none left unchecked
    kinds = {r["kind"] for r in report["records"]}
    assert {"interrupted generation", "baseline after interrupt", "baseline after switch", "malformed",
            "encode", "faces", "setting", "fixed unit"} <= kinds  # fmt: skip
    assert report["events"]["interrupts posted during a generation"] >= 1
    assert any(r["kind"].startswith("inpaint") for r in report["records"])


@pytest.mark.parametrize(
    ("fault", "caught_by"),
    [
        ("hook-after-interrupt", "baseline right after an interrupt identical"),
        ("cache-key", "fixed one-unit request pixel-identical to the first"),
        ("leak", "memory floor of requests"),
    ],
)
def test_each_check_catches_its_planted_fault(tmp_path, fault, caught_by):
    status, report = run_soak(tmp_path, fault)
    assert status == 1
    assert results(report)[caught_by] is False, report["checks"]


def test_a_control_run_sends_no_unit_and_keeps_the_host_invariants(tmp_path):
    """``--control``: the same host work with no unit, so nothing of the extension is ever
    loaded (the double's caches stay empty) while baselines, switches and interrupts still run."""
    status, report = run_soak(tmp_path, "", "--control")
    assert status == 0, report["checks"]
    kinds = {r["kind"] for r in report["records"]}
    assert {"baseline after switch", "interrupted generation"} <= kinds
    assert not kinds & {"encode", "faces", "malformed", "cache", "cache clear"}
    caches = next(c for c in report["checks"] if c["name"].startswith("caches"))
    held = dict(item.rsplit(" ", 1) for item in caches["evidence"].split("at the end: ")[1].split(", "))
    assert held["adapters"] == "0" and held["embeddings"] == "0", caches["evidence"]


def test_a_started_webui_leaves_the_install_as_found(tmp_path, monkeypatch):
    """``--webui-root``: the extension link, the second checkpoint and the tiny models the soak
    writes are all removed again (the process itself is a stand-in here)."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import load_file, save_file

    from tests.e2e import webui as harness
    from tests.test_e2e_harness import fake_install, tree

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from soaklib import webui as soak_webui

    class Process:
        def __init__(self, root: Path, log: Path, checkpoint: Path) -> None:
            self.python, self.url, self.proc = "/bin/false", "http://127.0.0.1:1", None

        def start(self) -> None:
            self.proc = SimpleNamespace(pid=1)

        def wait_ready(self, client: object) -> float:
            return 0.0

        def stop(self) -> None:
            pass

    root = tmp_path / "webui"
    checkpoint = fake_install(root)
    tensors = load_file(str(checkpoint))  # + the tensor the second checkpoint shifts
    save_file({**tensors, "model.diffusion_model.out.2.bias": torch.zeros(4)}, str(checkpoint))
    before = tree(root)
    monkeypatch.setattr(harness, "WebUIProcess", Process)
    with soak_webui.started(root, checkpoint) as (_, _, _, second):
        assert (root / "extensions" / harness.EXTENSION_DIR_NAME).is_symlink()
        assert (checkpoint.parent / second).is_file() and any((root / "models" / "ipadapter").iterdir())
    assert tree(root) == before
