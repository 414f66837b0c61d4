"""The opt-in e2e suite's own harness (tests/e2e/webui.py), on a fake install: it leaves the install
as it found it, its servers listen on 127.0.0.1 only, the checkpoint reaches hosts without
``--ckpt``, and it sends nothing to a starting WebUI before the WebUI says it has started."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipadapter_ext.core.attend.layers import map_ldm_attn2
from tests.e2e import http_client
from tests.e2e import webui as harness

#: SD1.5's attn2 modules (LDM names) with small widths: what checkpoint_attn2 reads
_SD15_ATTN2 = [
    *(f"input_blocks.{i}.1.transformer_blocks.0.attn2" for i in (1, 2, 4, 5, 7, 8)),
    "middle_block.1.transformer_blocks.0.attn2",
    *(f"output_blocks.{i}.1.transformer_blocks.0.attn2" for i in range(3, 12)),
]


def fake_install(root: Path, with_ckpt_flag: bool = True) -> Path:
    """launch.py, a cmd_args.py with or without ``--ckpt``, and a checkpoint with SD1.5's attn2 keys."""
    (root / "modules").mkdir(parents=True)
    (root / "launch.py").write_text("")
    flags = ['"--server-name"', '"--nowebui"'] + (['"--ckpt"'] if with_ckpt_flag else [])
    (root / "modules" / "cmd_args.py").write_text("\n".join(f"parser.add_argument({f})" for f in flags))
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    assert len(map_ldm_attn2({n: None for n in _SD15_ATTN2})) == 16
    tensors = {f"model.diffusion_model.{n}.to_k.weight": torch.zeros(8, 12) for n in _SD15_ATTN2}
    save_file(tensors, str(folder / "sd15.safetensors"))
    return folder / "sd15.safetensors"


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_files_and_folders_a_session_writes_are_all_removed_again(tmp_path):
    root = tmp_path / "webui"
    checkpoint = fake_install(root)
    before = tree(root)
    created = harness.link_extension(root) + harness.write_tiny_models(root, checkpoint)
    assert (root / "extensions" / harness.EXTENSION_DIR_NAME).is_symlink()
    assert (root / "models" / "ipadapter" / harness.ADAPTER_FILE).is_file()
    # what the install lacked is listed, folders before their files
    assert created.index(root / "extensions") < created.index(root / "extensions" / harness.EXTENSION_DIR_NAME)
    assert created.index(root / "models" / "ipadapter") < created.index(
        root / "models" / "ipadapter" / harness.ADAPTER_FILE
    )
    harness.remove_created(created)
    assert tree(root) == before  # no empty models/ipadapter, models/clip_vision or extensions/ left
    assert checkpoint.is_file()


def test_folders_the_install_had_stay(tmp_path):
    root = tmp_path / "webui"
    checkpoint = fake_install(root)
    (root / "models" / "ipadapter").mkdir()
    (root / "models" / "ipadapter" / "mine.safetensors").write_bytes(b"x")
    (root / "extensions").mkdir()
    created = harness.link_extension(root) + harness.write_tiny_models(root, checkpoint)
    assert root / "models" / "ipadapter" not in created and root / "extensions" not in created
    harness.remove_created(created)
    assert (root / "models" / "ipadapter" / "mine.safetensors").is_file() and (root / "extensions").is_dir()
    assert not (root / "models" / "clip_vision").exists()


def test_servers_bind_127_0_0_1_and_the_checkpoint_reaches_a_host_without_ckpt(tmp_path):
    root = tmp_path / "webui"
    checkpoint = fake_install(root)
    with_flag = harness.WebUIProcess(root, tmp_path / "a" / "webui.log", checkpoint, extra_args=("--nowebui",))
    args = with_flag.args
    assert args[args.index("--server-name") + 1] == "127.0.0.1" and "--nowebui" in args
    assert args[args.index("--ckpt") + 1] == str(checkpoint)
    assert (tmp_path / "a" / "config.json").read_text() == '{"sd_model_checkpoint": "sd15.safetensors"}'

    bare = tmp_path / "bare"
    checkpoint = fake_install(bare, with_ckpt_flag=False)  # ersatzForge: no --ckpt
    without = harness.WebUIProcess(bare, tmp_path / "b" / "webui.log", checkpoint)
    assert "--ckpt" not in without.args and "127.0.0.1" in without.args
    assert '"sd15.safetensors"' in (tmp_path / "b" / "config.json").read_text()
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ValueError, match="has no --ckpt: put elsewhere.safetensors in"):
        harness.WebUIProcess(bare, tmp_path / "c" / "webui.log", elsewhere)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_listening_addresses_are_read_from_proc(host):
    with socket.socket() as s:
        s.bind((host, 0))
        s.listen()
        found = harness.listening_addresses(s.getsockname()[1])
    if found is None:
        pytest.skip("no /proc/net/tcp on this system")
    assert found == {host}


_REQUESTS: list[float] = []  # when the fake WebUI was asked


class _Counting(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        _REQUESTS.append(time.monotonic())
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("started", [True, False])
def test_nothing_is_sent_before_the_webui_says_it_started(tmp_path, started):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _REQUESTS.clear()
        process = harness.WebUIProcess.__new__(harness.WebUIProcess)
        process.log_path = tmp_path / "webui.log"
        process.log_path.write_text(
            "Running on local URL:  http://127.0.0.1\n" + ("Startup time: 9.9s.\n" if started else "")
        )
        process.proc = type("Running", (), {"poll": lambda self: None})()
        client = http_client.Client(f"http://127.0.0.1:{server.server_address[1]}")
        begin = time.monotonic()
        took = process.wait_ready(client, timeout=5.0)
        if started:
            assert took < 2.0 and _REQUESTS
        else:  # polled only after 80% of the timeout
            assert took >= 4.0 and min(_REQUESTS) - begin >= 4.0
    finally:
        server.shutdown()


def test_a_script_that_failed_to_load_ends_the_wait_at_once_with_its_traceback(tmp_path):
    """The host starts without our script (Forge Classic rejected ``name=`` once): no route of ours
    will ever answer, so the wait ends with the host's report instead of running out its timeout."""
    process = harness.WebUIProcess.__new__(harness.WebUIProcess)
    process.log_path = tmp_path / "webui.log"
    process.log_path.write_text(
        "*** Error loading script: ipadapter.py\n    Traceback (most recent call last):\n"
        "    TypeError: on_cfg_denoiser() got an unexpected keyword argument 'name'\n"
        "Running on local URL:  http://127.0.0.1\nStartup time: 9.9s.\n"
    )
    process.proc = type("Running", (), {"poll": lambda self: None})()
    begin = time.monotonic()
    with pytest.raises(RuntimeError, match="could not load the extension's script(.|\n)*unexpected keyword"):
        process.wait_ready(http_client.Client("http://127.0.0.1:9"), timeout=60.0)
    assert time.monotonic() - begin < 5.0
