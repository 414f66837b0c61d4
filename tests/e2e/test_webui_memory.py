"""A real WebUI under its memory flags (``WEBUI_ARGS``: ``--medvram``, ``--lowvram``,
``--medvram-sdxl``; tests/e2e/gpu_matrix.py runs the suite once per flag).

The probe extension (``probe.py``, ``WEBUI_ROOT`` mode) says where A1111 keeps the model: with
``--medvram``/``--lowvram`` (``--medvram-sdxl`` with an SDXL model) ``modules/lowvram.py`` must have
engaged (its pre-hooks on the UNet wrapper, or on the UNet's blocks), also with ``--use-cpu all``,
where the "GPU" is the CPU and the hooks move nothing, but the code paths are the real ones. On a
GPU, a generation with a unit must leave the allocated VRAM where a generation without one leaves
it: the encoder, the projections and the K/V are gone from the device afterwards. Every other file
of the suite runs under the same flags; a tensor on the wrong device fails their requests.

On the Forge family the probe also lists the host's loaded models: generations with units leave
that list as a generation without one leaves it (each hands the host a new K/V module, which the
host itself would keep listed).

``WEBUI_E2E_REPORT=path.json``: the probe's answers and the measured VRAM are written there (the
matrix script puts them in its table).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import WebUI
from .probe import ROUTE
from .sdxl import NO_APPROX_PREVIEW
from .test_webui_http import generate, txt2img_payload, unit, with_units

MEMORY_FLAGS = ("--medvram", "--lowvram", "--medvram-sdxl")


def server_flags() -> set[str]:
    return {a.split("=")[0] for a in shlex.split(os.environ.get("WEBUI_ARGS", ""))} & set(MEMORY_FLAGS)


def probe(webui: WebUI) -> dict:
    answer = webui.client.get(ROUTE)
    if answer.status == 404:
        pytest.skip("no probe extension (WEBUI_URL mode): where the model is cannot be asked")
    assert answer.status == 200, answer.text[:2000]
    return answer.json()


def report(**values) -> None:
    path = os.environ.get("WEBUI_E2E_REPORT")
    if not path:
        return
    target = Path(path)
    current = json.loads(target.read_text()) if target.is_file() else {}
    current.update(values)
    target.write_text(json.dumps(current, indent=2, sort_keys=True))


def is_forge(webui: WebUI) -> bool:
    return webui.root is not None and ((webui.root / "modules_forge").is_dir())


def test_the_memory_flags_engage_lowvram(webui: WebUI, model: str):
    generate(webui.client, txt2img_payload(steps=1))  # the model is loaded
    info = probe(webui)
    report(probe=info, webui_args=os.environ.get("WEBUI_ARGS", ""))
    flags = server_flags()
    if is_forge(webui):
        assert not info["lowvram"], info  # Forge manages memory itself
        return
    assert {f"--{k.replace('_', '-')}" for k, on in info["flags"].items() if on} == flags, info
    engaged = bool(flags & {"--medvram", "--lowvram"})  # the session's checkpoint is SD1.5
    assert info["lowvram"] is engaged, info
    if "--lowvram" in flags:
        assert info["block_pre_hooks"] >= 1 and info["wrapper_pre_hooks"] == 0, info
    elif engaged:
        assert info["wrapper_pre_hooks"] >= 1, info


def test_a_unit_leaves_no_vram_behind(webui: WebUI, model: str):
    plain = txt2img_payload()
    generate(webui.client, plain)
    before = probe(webui)
    if not before["cuda"]:
        pytest.skip("no CUDA in the WebUI: VRAM is measured on a GPU only")
    generate(webui.client, with_units(plain, unit(model)))
    generate(webui.client, plain)
    after = probe(webui)
    grown = after["allocated"] - before["allocated"]
    report(vram={"allocated_before": before["allocated"], "allocated_after": after["allocated"], "grown": grown})
    # the tiny encoder/adapter are a few MB; allow the allocator some slack, nothing model-sized
    assert grown < 32 * 2**20, f"{grown / 2**20:.1f} MiB more allocated after a generation with a unit"


def test_units_leave_the_hosts_list_of_loaded_models_as_they_found_it(webui: WebUI, model: str):
    plain = txt2img_payload(steps=2)
    assert_units_leave_loaded_models(webui, plain, lambda seed: with_units({**plain, "seed": seed}, unit(model)))


def assert_units_leave_loaded_models(webui: WebUI, plain: dict, with_unit: Callable[[int], dict]) -> None:
    """After a plain generation, three with a unit (``with_unit(seed)``): the Forge family's list of
    loaded models holds after each what it held after the plain one (test_webui_flux.py too)."""
    generate(webui.client, plain)
    before = probe(webui)["loaded_models"]
    if before is None:
        pytest.skip("this host has no Forge memory management (A1111 keeps one model, no list)")
    lists = []
    for seed in (1, 2, 3):
        generate(webui.client, with_unit(seed))
        lists.append(probe(webui)["loaded_models"])
    report(loaded_models={"before": before, "after_units": lists})
    for after in lists:
        assert not {"KVModule", "_TokenModule"} & set(after), after
        assert sorted(after) == sorted(before), (before, after)


def test_medvram_sdxl_engages_lowvram_for_sdxl_only(webui: WebUI, model: str):
    if "--medvram-sdxl" not in server_flags() or is_forge(webui):
        pytest.skip("only with --medvram-sdxl in WEBUI_ARGS, on A1111")
    if webui.extras is None or webui.extras.sdxl is None:
        pytest.skip("no tiny SDXL in this session")
    listed = webui.client.get("/sdapi/v1/sd-models").json()
    title = next(c["title"] for c in listed if Path(c.get("filename") or "").name == webui.extras.sdxl.checkpoint)
    settings = {"sd_model_checkpoint": title, **NO_APPROX_PREVIEW}
    generate(
        webui.client, txt2img_payload(steps=1, override_settings=settings, override_settings_restore_afterwards=True)
    )
    info = probe(webui)  # the SDXL model stays loaded after the request
    report(probe_sdxl=info)
    assert info["lowvram"] is True and info["wrapper_pre_hooks"] >= 1, info
    generate(webui.client, txt2img_payload(steps=1))  # back to the session's SD1.5
    assert probe(webui)["lowvram"] is False
