"""The core stays host-free: it imports without the WebUI's ``modules`` or gradio."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import ipadapter_ext.core

CORE = Path(ipadapter_ext.core.__file__).parent
FORBIDDEN = {"modules", "gradio", "fastapi", "launch", "ldm", "sgm", "backend", "scripts"}


def test_core_sources_import_no_host_package():
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_every_core_module_imports_with_host_packages_blocked():
    modules = [m.name for m in pkgutil.walk_packages([str(CORE)], prefix="ipadapter_ext.core.")]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {sorted(FORBIDDEN)!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    __import__(m)\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_importing_the_packages_does_no_heavy_work():
    code = "import sys, ipadapter_ext, ipadapter_ext.core; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parent.parent)
    assert result.stdout.split() == ["False", "False"], result.stderr
