"""A real WebUI over HTTP: a ``.bin`` adapter written by current torch, next to its ``.safetensors`` twin.

A1111 replaces ``torch.load`` with a checker whose 2023 allow-list lacks the ``.format_version``
entry current torch writes into every zip; it prints "The file may be malicious" and returns
``None``. The extension must read such a file with torch's own weights-only loader: listed without
error, and the same image as the ``.safetensors`` file with the same tensors.

``WEBUI_ROOT`` only: the twin is written by ``extras.py`` before the server starts. Opt-in like the
rest of tests/e2e (see ``conftest.py``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from .conftest import WebUI
from .test_webui_http import baseline, generate, same_pixels, txt2img_payload, unit, with_units

__all__ = ["baseline"]  # the session fixture, shared with test_webui_http


@pytest.fixture(scope="module")
def twin(webui: WebUI) -> Path:
    if webui.mode != "root" or webui.extras is None or webui.extras.bin_twin is None:
        pytest.skip("the .bin twin is written only in WEBUI_ROOT mode, before the server starts")
    return webui.extras.bin_twin


def _listed(webui: WebUI) -> dict[str, dict]:
    answer = webui.client.get("/ipadapter/v1/models?refresh=true")
    assert answer.status == 200, answer.text
    return {m["file"]: m for m in answer.json()["models"]}


@pytest.fixture(scope="module")
def twin_model(webui: WebUI, twin: Path) -> str:
    listed = _listed(webui)
    assert twin.name in listed, f"{twin.name} is not listed: {sorted(listed)}"
    return listed[twin.name]["name"]


def test_the_twin_is_a_current_torch_zip_with_the_same_tensors(webui: WebUI, twin: Path):
    import torch
    from safetensors.torch import load_file

    with zipfile.ZipFile(twin) as z:
        names = z.namelist()
    assert any(n.endswith("/.format_version") for n in names), names  # what A1111's allow-list refuses
    assert any(n.endswith("/data.pkl") for n in names), names
    nested = torch.load(twin, map_location="cpu", weights_only=True)
    flat = {f"{part}.{k}": v for part in ("image_proj", "ip_adapter") for k, v in nested[part].items()}
    original = load_file(str(twin.with_name(webui.adapter_file)))
    assert sorted(flat) == sorted(original)
    assert all(torch.equal(flat[k], original[k]) for k in original)


def test_the_twin_is_listed_like_its_original(webui: WebUI, model: str, twin: Path):
    listed = _listed(webui)
    bin_entry, original = listed[twin.name], listed[webui.adapter_file]
    assert bin_entry["error"] is None, bin_entry
    assert bin_entry["compatible"] is True, bin_entry
    fields = ("kind", "variant", "base", "context_dim", "layers", "tokens", "encoder")
    assert {f: bin_entry[f] for f in fields} == {f: original[f] for f in fields}


def test_the_twin_gives_the_same_image(webui: WebUI, model: str, twin_model: str, baseline: str):
    from_bin = generate(webui.client, with_units(txt2img_payload(), unit(twin_model)))[0]
    from_safetensors = generate(webui.client, with_units(txt2img_payload(), unit(model)))[0]
    assert not same_pixels(from_bin, baseline), "the .bin unit did not change the image"
    assert same_pixels(from_bin, from_safetensors), "the .bin and .safetensors twins gave different images"


def test_no_malicious_warning_in_the_server_log(webui: WebUI, model: str, twin_model: str):
    """``model`` skips it on a Flux checkpoint, where the SD twin would be refused (a 422)."""
    generate(webui.client, with_units(txt2img_payload(steps=1), unit(twin_model, weight=0.5)))
    assert webui.log_path is not None
    lines = webui.log_path.read_text(errors="replace").splitlines()
    flagged = [line for line in lines if "malicious" in line.lower()]
    assert not flagged, "the server log flags a file:\n" + "\n".join(flagged[:20])
