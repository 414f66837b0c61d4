"""install.py's onnxruntime install keeps the WebUI's protobuf and numpy where they are.

A plain ``pip install onnxruntime`` upgrades Forge's pinned ``protobuf==3.20.0`` (newer wheels
declare ``protobuf>=4.25``). These tests read the command ``install.py`` runs, and run the
commands for real with pip in a throw-away venv against a local index of tiny wheels shaped like
onnxruntime's releases (no network).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ipadapter_ext import face_setup

ROOT = Path(__file__).resolve().parents[1]


def constraints_of(command: list[str]) -> list[str]:
    """The lines of the constraints file a pip command names (read while it still exists)."""
    assert command.count("-c") == 1, command
    return Path(command[command.index("-c") + 1]).read_text(encoding="utf-8").split()


def test_install_py_runs_pip_with_the_installed_protobuf_and_numpy_as_constraints(monkeypatch, capsys):
    commands: list[tuple[list[str], list[str]]] = []

    def call(command: list[str]) -> int:
        commands.append((command, constraints_of(command)))
        return 0

    monkeypatch.setattr(face_setup, "onnxruntime_present", lambda: False)
    monkeypatch.setattr(face_setup.subprocess, "call", call)
    monkeypatch.setenv("IPADAPTER_FACEID", "1")
    runpy.run_path(str(ROOT / "install.py"), run_name="__main__")

    assert "installing onnxruntime for FaceID face analysis (IPADAPTER_FACEID=1)" in capsys.readouterr().out
    assert len(commands) == 1, commands
    command, constraints = commands[0]
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    assert command[-1] == "onnxruntime"
    assert not {"-U", "--upgrade", "--force-reinstall", "--no-deps"} & set(command)
    assert constraints == [
        f"protobuf=={importlib.metadata.version('protobuf')}",
        f"numpy=={importlib.metadata.version('numpy')}",
    ]
    assert not Path(command[command.index("-c") + 1]).exists(), "the constraints file is left behind"


def test_when_no_release_fits_onnxruntime_goes_in_without_deps_and_only_unheld_deps_are_added(capsys):
    versions = {"protobuf": "3.20.0"}  # numpy absent: no pin for it
    commands = []

    def version(name: str) -> str:
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    def run(command: list[str]) -> int:
        commands.append((command, constraints_of(command)))
        return 1 if len(commands) == 1 else 0

    requires = ["flatbuffers", "numpy>=1.21.6", "packaging", "Protobuf>=4.25.8", "sympy", "onnx ; extra == 'tools'"]
    code = face_setup.install_onnxruntime(run=run, python="/venv/python", version=version, requires=lambda _: requires)
    assert code == 0
    assert "no onnxruntime release fits the installed protobuf==3.20.0" in capsys.readouterr().out
    (first, c1), (second, c2), (third, c3) = commands
    assert c1 == c2 == c3 == ["protobuf==3.20.0"]
    assert first[-1] == "onnxruntime" and "--no-deps" not in first
    assert second[:5] == ["/venv/python", "-m", "pip", "install", "--no-deps"] and second[-1] == "onnxruntime"
    assert third[third.index("-c") + 2 :] == ["flatbuffers", "packaging", "sympy"]


def test_a_failing_no_deps_install_is_reported_and_nothing_more_runs():
    commands = []
    code = face_setup.install_onnxruntime(
        run=lambda c: commands.append(c) or 2, python="p", version=lambda n: "1.0", requires=lambda _: ["x"]
    )
    assert code == 2 and len(commands) == 2


# --- real pip, local index ------------------------------------------------------------------


def wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A minimal, valid pure-Python wheel declaring ``requires``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        + f"Name: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def index(folder: Path, onnxruntime: dict[str, list[str]]) -> Path:
    folder.mkdir()
    wheel(folder, "protobuf", "3.20.0", [])
    wheel(folder, "protobuf", "4.25.9", [])
    wheel(folder, "numpy", "1.26.2", [])
    wheel(folder, "numpy", "2.1.0", [])
    wheel(folder, "flatbuffers", "25.2.10", [])
    for version, requires in onnxruntime.items():
        wheel(folder, "onnxruntime", version, requires)
    return folder


def installed(python: str) -> dict[str, str]:
    out = subprocess.run(
        [python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {d["name"].lower(): d["version"] for d in json.loads(out)}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> str:
    """A venv holding the WebUI's pins (tiny stand-ins): protobuf 3.20.0, numpy 1.26.2."""
    root = tmp_path_factory.mktemp("pins")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = str(root / "venv" / "bin" / "python")
    wheels = index(root / "pins", {})
    pins = ["protobuf==3.20.0", "numpy==1.26.2"]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *pins], check=True)
    return python


def local(python: str, wheels: Path):
    """install_onnxruntime's hooks pointed at ``python``'s venv and the local index."""
    site = next(Path(python).parents[1].glob("lib/python*/site-packages"))

    def dist(name: str) -> importlib.metadata.Distribution:
        found = list(importlib.metadata.distributions(name=name, path=[str(site)]))
        if not found:
            raise importlib.metadata.PackageNotFoundError(name)
        return found[0]

    def run(command: list[str]) -> int:
        return subprocess.call(
            [*command, "-q", "--no-index", "--find-links", str(wheels), "--disable-pip-version-check"]
        )

    return {"run": run, "python": python, "version": lambda n: dist(n).version, "requires": lambda n: dist(n).requires}


RELEASES = {
    "1.26.0": ["flatbuffers", "numpy>=1.21.6", "protobuf"],
    "1.32.0": ["flatbuffers", "numpy>=1.21.6", "protobuf>=4.25.8"],
}


def test_real_pip_picks_an_onnxruntime_that_keeps_protobuf(venv, tmp_path):
    wheels = index(tmp_path / "index", RELEASES)
    dry_run = ["--dry-run", "--report", "-", "-q", "--no-index", "--find-links", str(wheels)]
    plain = subprocess.run(
        [venv, "-m", "pip", "install", *dry_run, "onnxruntime", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    )
    would = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.loads(plain.stdout)["install"]}
    assert would.get("protobuf") == "4.25.9", f"the unconstrained install should move protobuf here: {would}"

    assert face_setup.install_onnxruntime(**local(venv, wheels)) == 0
    now = installed(venv)
    assert (now["onnxruntime"], now["protobuf"], now["numpy"]) == ("1.26.0", "3.20.0", "1.26.2")
    assert "flatbuffers" in now
    subprocess.run([venv, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime", "flatbuffers"], check=True)


def test_real_pip_without_a_fitting_release_installs_it_without_moving_protobuf(venv, tmp_path):
    wheels = index(tmp_path / "index", {"1.32.0": RELEASES["1.32.0"]})
    assert face_setup.install_onnxruntime(**local(venv, wheels)) == 0
    now = installed(venv)
    assert (now["onnxruntime"], now["protobuf"], now["numpy"]) == ("1.32.0", "3.20.0", "1.26.2")
    assert "flatbuffers" in now, "the unheld dependency was not added"
    subprocess.run([venv, "-m", "pip", "uninstall", "-q", "-y", "onnxruntime", "flatbuffers"], check=True)
