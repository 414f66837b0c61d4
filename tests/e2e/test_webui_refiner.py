"""A real WebUI with the refiner: the host loads another checkpoint mid-sampling.

A1111 (``sd_samplers_common.apply_refiner`` → ``sd_models.reload_model_weights``) reloads the
weights into the same model when the refiner's config file is the base's (a checkpoint without a
``.yaml`` beside it, whose config A1111 picks from its keys), and builds a new model otherwise (a
checkpoint with its own ``.yaml``, as the twins of the tiny test checkpoints have), firing
``model_loaded_callback`` either way; Forge (``forge_model_reload``) always builds a new model. A
unit whose adapter fits the refiner must act in the refiner's steps; one that does not fit must
let the generation finish without it, saying so in the console.

The refiners are twins of the session's checkpoints (``extras.py``: the same file under another
name), so a refiner switch happens while the weights stay the same: a unit that starts after the
switch changes the image exactly when it is applied to the refiner.

Opt-in like the rest of tests/e2e. ``WEBUI_ROOT``: the twins are written before the start.
``WEBUI_URL``: set ``WEBUI_REFINER_CKPT`` to a checkpoint title the adapter fits (else skipped).
"""

from __future__ import annotations

import os
import warnings
from pathlib import PurePath

import pytest

from . import extras as extra_files
from .conftest import HOST_DEFECT, WebUI
from .sdxl import NO_APPROX_PREVIEW
from .test_webui_http import generate, same_pixels, txt2img_payload, unit, with_units
from .test_webui_sdxl import _enough_memory as enough_memory

SWITCH_AT = 0.5
#: Enough steps that some come after the switch and after the late unit's start (A1111 switches by
#: timestep by default, Forge by step; both near the middle here).
STEPS = 8
LATE = 0.75


def _title(webui: WebUI, file_name: str) -> str | None:
    """The listed title of ``file_name``. Where the host's ``/sdapi/v1/sd-models`` fails (ersatzForge
    fca12a2) and the session put the file into the install, the failure is flagged as the host's and
    the file name, which the refiner field accepts as well, is used."""
    answer = webui.client.get("/sdapi/v1/sd-models")
    if answer.status != 200 and webui.mode == "root":
        warnings.warn(
            f"{HOST_DEFECT}: GET /sdapi/v1/sd-models answered {answer.status} ({answer.text[:200]}); "
            f"the checkpoint is named by its file name {file_name!r}",
            stacklevel=2,
        )
        return file_name
    assert answer.status == 200, answer.text
    for entry in answer.json():
        if file_name in (entry.get("title"), entry.get("model_name"), PurePath(entry.get("filename") or "").name):
            return entry["title"]
    return None


def _log(webui: WebUI) -> str:
    return webui.log_path.read_text(errors="replace") if webui.log_path is not None else ""


@pytest.fixture(scope="module")
def refiner(webui: WebUI, model: str) -> str:
    """The title of a refiner the session's adapter fits (the checkpoint's twin)."""
    wanted = os.environ.get("WEBUI_REFINER_CKPT") or extra_files.REFINER_TWIN_FILE
    title = _title(webui, wanted)
    if title is None:
        if webui.mode == "root":
            pytest.fail(f"the refiner twin {wanted} was written before the start, but the server does not list it")
        pytest.skip(f"no refiner: set WEBUI_REFINER_CKPT to a checkpoint the adapter fits ({wanted!r} not listed)")
    return title


def refined(title: str, **overrides) -> dict:
    payload = txt2img_payload(refiner_checkpoint=title, refiner_switch_at=SWITCH_AT, steps=STEPS, **overrides)
    payload["override_settings"] = {**NO_APPROX_PREVIEW, **payload.get("override_settings", {})}
    return payload


def test_a_unit_acts_in_the_refiner_steps_when_it_fits(webui: WebUI, model: str, refiner: str):
    before = len(_log(webui))
    plain = generate(webui.client, refined(refiner))[0]
    late = generate(webui.client, with_units(refined(refiner), unit(model, start=LATE)))[0]
    assert not same_pixels(late, plain), "a unit starting after the refiner switch changed nothing: it was dropped"
    again = generate(webui.client, refined(refiner))[0]
    assert same_pixels(again, plain), "the unit's hooks or patches leaked into the next refiner request"
    if webui.log_path is not None:
        log = _log(webui)[before:]
        assert "IP-Adapter: applied to the refiner" in log, log[-3000:]
        assert "not applied after the switch" not in log, log[-3000:]


def _no_sdxl_reason(webui: WebUI) -> str:
    """Why this session has no SDXL to switch to, in words."""
    if webui.extras is None:
        return "WEBUI_URL mode: the suite writes no SDXL into a WebUI it did not start"
    return webui.extras.sdxl_skipped or "no SDXL was written in this session"


def test_a_refiner_the_adapter_does_not_fit_finishes_without_the_unit(webui: WebUI, model: str):
    """An SD1.5 unit with an SDXL refiner: on A1111 the tiny SDXL's twin, on the Forge family (which
    cannot load the tiny SDXL) the full-size SDXL checkpoint the install holds."""
    files = webui.extras.sdxl if webui.extras is not None else None
    if files is None:
        pytest.skip(f"no SDXL refiner: {_no_sdxl_reason(webui)}")
    wanted = files.checkpoint if files.full_size else webui.extras.sdxl_refiner_twin.name
    enough_memory(files)
    title = _title(webui, wanted)
    assert title is not None, f"the SDXL refiner {wanted} is in the install, but the server does not list it"
    before = len(_log(webui))
    with_unit = generate(webui.client, with_units(refined(title), unit(model)))[0]
    plain = generate(webui.client, refined(title))[0]
    assert not same_pixels(with_unit, plain), "the unit did not act before the switch"
    log = _log(webui)[before:]
    assert "IP-Adapter: not applied after the switch to SDXL" in log, log[-3000:]


def test_an_sdxl_unit_follows_a_new_sdxl_model(webui: WebUI):
    """The tiny SDXL with its twin as the refiner: A1111 builds a new model (another yaml) and the
    unit, whose adapter fits it, moves onto its UNet."""
    files = webui.extras.sdxl if webui.extras is not None else None
    if files is None:
        pytest.skip(f"no SDXL: {_no_sdxl_reason(webui)}")
    if files.full_size:
        pytest.skip(
            "Forge family: only the full-size SDXL loads here, and a refiner twin of it would load 6.5 GiB twice "
            "per generation; what this test adds (A1111 building a new model for another yaml) does not exist on "
            "Forge, which builds one at every switch (test_a_unit_acts_in_the_refiner_steps_when_it_fits)"
        )
    assert webui.extras.sdxl_refiner_twin is not None
    base = _title(webui, webui.extras.sdxl.checkpoint)
    twin = _title(webui, extra_files.SDXL_REFINER_TWIN_FILE)
    assert base and twin
    adapters = webui.client.get("/ipadapter/v1/models?refresh=true").json()["models"]
    adapter = next(m["name"] for m in adapters if m["file"] == webui.extras.sdxl.adapter)
    settings = {"sd_model_checkpoint": base, **NO_APPROX_PREVIEW}
    payload = refined(twin, override_settings=settings, override_settings_restore_afterwards=True)
    before = len(_log(webui))
    plain = generate(webui.client, payload)[0]
    late = generate(webui.client, with_units(payload, unit(adapter, start=LATE)))[0]
    assert not same_pixels(late, plain), "an SDXL unit starting after the switch changed nothing: it was dropped"
    log = _log(webui)[before:]
    assert "IP-Adapter: applied to the refiner (SDXL) too." in log, log[-3000:]
