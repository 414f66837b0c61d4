"""Issue 19 item 8 in a real Forge on Flux: our units beside a second extension that patches the
same double blocks (``second_script.py``, installed before the server starts; one copy loads before
this extension, one after, so a request picks the order by the script it enables).

Before the fix, a unit right after a request that used the other script gave "Encountered
RecursionError during sampling" (HTTP 200, wrong image), both in one request a 500 ``KeyError``
from the other script's hook called through ours, and every later request the RecursionError.
Here every request must answer 200, with the image the same request gave before, in any sequence,
and the server log must show no RecursionError or KeyError.
"""

from __future__ import annotations

import warnings

import pytest

from .conftest import WebUI
from .second_script import SCRIPTS
from .test_webui_flux import flux, flux_payload  # noqa: F401 (flux: a fixture)
from .test_webui_http import generate, same_pixels, unit, with_units

BEFORE, AFTER = (title for _, title in SCRIPTS)


def _payload(flux_model: str | None, scaler: str | None = None, factor: float = 0.9) -> dict:
    payload = flux_payload()
    if flux_model is not None:
        payload = with_units(payload, unit(flux_model, weight=1.0))
    if scaler is not None:
        payload = {**payload, "alwayson_scripts": {**payload.get("alwayson_scripts", {}), scaler: {"args": [factor]}}}
    return payload


@pytest.fixture(scope="module")
def scalers(webui: WebUI, request: pytest.FixtureRequest) -> str:
    """The XLabs model's name, once both copies of the second script are seen loaded."""
    model = request.getfixturevalue("flux")  # skips unless the WebUI runs a Flux checkpoint
    if webui.mode != "root":
        pytest.skip("the second script is installed into WEBUI_ROOT before the start (not available with WEBUI_URL)")
    scripts = webui.client.get("/sdapi/v1/script-info").json()
    names = {s["name"] for s in scripts}
    missing = [t for t in (BEFORE, AFTER) if t not in names]
    assert not missing, f"the second script is not loaded: {missing} (installed by tests/e2e/extras.py)"
    return model


def _log(webui: WebUI) -> str:
    return webui.log_path.read_text(errors="replace") if webui.log_path else ""


def test_units_beside_another_block_patching_script_in_any_sequence(webui: WebUI, scalers: str):
    model = scalers
    flux_baseline = generate(webui.client, flux_payload())[0]
    start = len(_log(webui))
    seen: dict[tuple, str] = {}

    def request(with_unit: bool, scaler: str | None) -> str:
        image = generate(webui.client, _payload(model if with_unit else None, scaler))[0]
        key = (with_unit, scaler)
        if key in seen:
            assert same_pixels(image, seen[key]), f"{key} gave another image after other requests"
        seen[key] = image
        return image

    unit_only = request(True, None)  # first, before the other script ever ran
    other_before = request(False, BEFORE)
    alone_acts = not same_pixels(other_before, flux_baseline)
    if not alone_acts:
        # ersatzForge runs a clone of the loaded model on it as it is, without the clone's object
        # patches: a script whose only patches are object patches does nothing there on its own.
        # With a unit in the request our wrapper puts the sampled clone's patches on (theirs too),
        # so everything below with both still holds.
        warnings.warn(
            "the second script alone did not change the image: this WebUI does not apply a clone's "
            "object patches (ersatzForge's memory manager), which is the host's, not this extension's",
            stacklevel=2,
        )
    request(True, None)  # a unit right after the other script (RecursionError before the fix)
    both_before = request(True, BEFORE)  # both in one request (KeyError before the fix)
    both_after = request(True, AFTER)
    for image in (both_before, both_after):
        assert not same_pixels(image, unit_only), "the second script had no effect beside a unit"
        assert not alone_acts or not same_pixels(image, other_before), "the unit had no effect beside the second script"
    assert not same_pixels(both_before, both_after), "the two orders compose differently"
    assert same_pixels(request(False, None), flux_baseline), "a plain request after them differs"
    request(False, AFTER)
    request(True, None)
    request(True, BEFORE)
    request(False, BEFORE)
    assert same_pixels(request(False, AFTER), request(False, BEFORE)), "the two copies of the script differ alone"
    request(True, AFTER)
    assert same_pixels(generate(webui.client, flux_payload())[0], flux_baseline)
    log = _without_host_tracebacks(_log(webui)[start:])
    for bad in ("RecursionError", "KeyError", "Traceback"):
        assert bad not in log, f"the server log shows {bad}:\n{log[-4000:]}"


#: Tracebacks a host prints on every generation whatever the extensions do, by a line unique to
#: each: ersatzForge fca12a2's built-in Lora reads an option a fresh config.json lacks.
HOST_TRACEBACKS = ("'Options' object has no attribute 'lora_add_hashes_to_infotext'",)


def _without_host_tracebacks(log: str) -> str:
    """``log`` without the traceback blocks (from "Traceback" to the exception line) that end in
    one of :data:`HOST_TRACEBACKS`."""
    out, rest = [], log
    while "Traceback" in rest:
        head, _, tail = rest.partition("Traceback")
        block, newline, after = tail.partition("\nAttributeError: ")
        line, _, after = after.partition("\n")
        if newline and any(known in line for known in HOST_TRACEBACKS) and "Traceback" not in block:
            out.append(head)
            rest = after
        else:
            out.append(head + "Traceback")
            rest = tail
    return "".join(out) + rest
