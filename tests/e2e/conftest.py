"""Fixtures of the opt-in end-to-end suite: one WebUI for the whole session, reached over HTTP.

``WEBUI_URL=http://127.0.0.1:7860``
    A running WebUI started with ``--api`` and this extension; used as it is. The unit's model is
    ``WEBUI_IPADAPTER_MODEL``, else the first model ``GET /ipadapter/v1/models`` marks compatible.
``WEBUI_ROOT=/path/to/stable-diffusion-webui``
    An install folder. The suite links this checkout into ``extensions/`` (when absent), writes a
    tiny random adapter and CLIP vision encoder sized to the checkpoint (``WEBUI_CKPT``, else the
    only ``.safetensors`` in ``models/Stable-diffusion``), starts ``launch.py --api`` on a free
    127.0.0.1 port with ``WEBUI_PYTHON`` (default ``venv/bin/python``) and ``WEBUI_ARGS``, and
    stops it afterwards. The files and link it created are removed again unless ``WEBUI_E2E_KEEP=1``.

Besides those it writes a ``.bin`` twin of the adapter and, on A1111, a tiny SDXL with its own
adapter (``WEBUI_E2E_SDXL``, see ``extras.py`` and ``sdxl.py``).

With a Flux checkpoint (Forge), the SD tests skip and ``test_webui_flux.py`` runs (the tiny SD adapter
is then SD1.5-sized; it is the one an SD-on-Flux request must refuse).

``WEBUI_URL`` wins when both are set. With neither, every test is skipped with ``ENABLE_HINT``.
Optional: ``WEBUI_AUTH=user:password`` (``--api-auth``), ``WEBUI_START_TIMEOUT`` (s, default 300),
``WEBUI_REQUEST_TIMEOUT`` (s, default 300), ``WEBUI_CONTROLNET_MODEL``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import browser
from .extras import ExtraModels, write_extra_models
from .http_client import Client, png_b64
from .webui import (
    ADAPTER_FILE,
    ENABLE_HINT,
    WebUIProcess,
    find_checkpoint,
    is_flux_checkpoint,
    link_extension,
    remove_created,
    write_tiny_models,
)


@dataclass
class WebUI:
    client: Client
    mode: str  # "url" (a running server) or "root" (started here)
    adapter_file: str | None = None  # the file whose model the units use, when written here
    log_path: Path | None = None  # the server's console log, when started here
    extras: ExtraModels | None = None  # the other files written before the start (extras.py)
    root: Path | None = None  # the install folder (WEBUI_ROOT), when started here
    checkpoint: Path | None = None  # the checkpoint it was started with


@pytest.fixture(scope="session")
def webui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUI]:
    url = os.environ.get("WEBUI_URL")
    root = os.environ.get("WEBUI_ROOT")
    auth = os.environ.get("WEBUI_AUTH")
    if url:
        client = Client(url, auth)
        if not client.answers("/sdapi/v1/options", timeout=30.0):
            pytest.fail(f"WEBUI_URL={url}: GET /sdapi/v1/options did not answer 200 (is it running with --api?)")
        yield WebUI(client, "url")
        return
    if not root:
        pytest.skip(ENABLE_HINT)

    root_path = Path(root).expanduser().resolve()
    if not (root_path / "launch.py").is_file():
        pytest.fail(f"WEBUI_ROOT={root}: no launch.py there (not a WebUI install folder)")
    keep = os.environ.get("WEBUI_E2E_KEEP") == "1"
    checkpoint = find_checkpoint(root_path)
    created: list[Path] = []
    created.extend(link_extension(root_path))
    written = write_tiny_models(root_path, checkpoint)
    created.extend(written)
    server = WebUIProcess(root_path, tmp_path_factory.mktemp("webui") / "webui.log", checkpoint)
    try:
        extras = write_extra_models(root_path, server.python, created, checkpoint)  # .bin twin, tiny SDXL, …
        server.start()
        client = Client(server.url, auth)
        took = server.wait_ready(client)
        print(f"\nWebUI ready at {server.url} in {took:.1f} s (log: {server.log_path})")
        yield WebUI(client, "root", ADAPTER_FILE, server.log_path, extras, root_path, checkpoint)
    finally:
        server.stop()
        if not keep:
            remove_created(created)


@pytest.fixture(scope="session")
def model(webui: WebUI) -> str:
    """The IP-Adapter model name the units use, checked to fit the loaded checkpoint."""
    if webui.checkpoint is not None and is_flux_checkpoint(webui.checkpoint):
        pytest.skip(
            f"{webui.checkpoint.name} is a Flux checkpoint: the SD tests need an SD one (test_webui_flux.py runs)"
        )
    answer = webui.client.get("/ipadapter/v1/models?refresh=true")
    assert answer.status == 200, answer.text
    models = answer.json()["models"]
    if models and all(m["compatible"] is None for m in models):  # no checkpoint loaded yet (Forge loads lazily)
        warm = webui.client.post("/sdapi/v1/txt2img", {"prompt": "", "steps": 1, "width": 64, "height": 64})
        assert warm.status == 200, warm.text
        answer = webui.client.get("/ipadapter/v1/models?refresh=true")
        assert answer.status == 200, answer.text
        models = answer.json()["models"]
    wanted = os.environ.get("WEBUI_IPADAPTER_MODEL")
    if wanted:
        found = [m for m in models if m["name"] == wanted]
    elif webui.adapter_file:
        found = [m for m in models if m["file"] == webui.adapter_file]
    else:
        found = [m for m in models if m["compatible"] is True]
    names = [(m["name"], m["compatible"], m["reason"] or m["error"]) for m in models]
    if not found:
        pytest.fail(f"no usable IP-Adapter model (WEBUI_IPADAPTER_MODEL={wanted!r}); the server lists {names}")
    entry = found[0]
    if entry["compatible"] is not True:
        pytest.fail(f"model {entry['name']!r} does not fit the loaded checkpoint: {entry['reason'] or entry['error']}")
    return entry["name"]


#: What a skip for a host's own defect starts with: never a failure of ours, never silently green.
HOST_DEFECT = "HOST DEFECT (not this extension)"


@pytest.fixture(scope="session")
def repeatable_img2img(webui: WebUI) -> None:
    """For the tests that compare img2img images pixel for pixel: skips them, naming the host's
    defect, where identical plain img2img requests (no unit, after a warm-up) differ from each
    other. ersatzForge fca12a2 is such a host (its ``rng.randn`` no longer reseeds the global
    generator that the VAE's posterior sample draws from), and there such a test could not tell a
    change of ours from the host's noise."""
    from .test_webui_http import generate, img2img_payload, same_pixels

    generate(webui.client, img2img_payload(), "img2img")  # the server's first img2img may differ from later ones
    images = [generate(webui.client, img2img_payload(), "img2img")[0] for _ in range(3)]
    if not all(same_pixels(images[0], other) for other in images[1:]):
        pytest.skip(
            f"{HOST_DEFECT}: three identical plain img2img requests, with no IP-Adapter unit, gave different "
            "images on this WebUI, so an img2img equality test cannot tell a change of ours from the host's noise"
        )


# ------------------------------------------------------------------ browser (test_browser*.py)


@pytest.fixture(scope="module")
def driver(webui) -> Iterator[object]:
    why = browser.missing()
    if why:
        pytest.skip(f"browser tests: {why}")
    d = browser.start_driver()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def page(driver, webui) -> browser.Page:
    p = browser.Page(driver, webui.client.base_url)
    p.open()
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    import base64

    path = tmp_path_factory.mktemp("browser") / "reference.png"
    path.write_bytes(base64.b64decode(png_b64(96, seed=3)))
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("WEBUI_E2E_ARTIFACTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("artifacts")
