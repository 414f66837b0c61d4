"""An API-only server (``--nowebui``): the extension's settings in ``/sdapi/v1/options``, its
X/Y/Z axes in ``/sdapi/v1/script-info``, and an X/Y/Z plot over the Weight axis through the API
giving the same images as separate requests.

The WebUI builds the scripts' UI inside the API's constructor there, before ``on_before_ui``,
and a UI-less start never showed our settings or axes. Needs ``WEBUI_ROOT``: a second server is
started here with ``--nowebui`` (and stopped at the end of the module).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipadapter_ext.interop.xyz import AXES as XYZ_AXES

from .http_client import Client, pixels
from .test_webui_http import REFERENCE, same_pixels, txt2img_payload
from .webui import SCRIPT_TITLE, WebUIProcess, listening_addresses

AXES = [axis.label for axis in XYZ_AXES]  # every axis the extension defines, in its order


@pytest.fixture(scope="module")
def api(webui, tmp_path_factory) -> Iterator[Client]:
    if webui.root is None:
        pytest.skip("needs WEBUI_ROOT: a second server is started here with --nowebui")
    log = tmp_path_factory.mktemp("api-only") / "webui.log"
    server = WebUIProcess(webui.root, log, webui.checkpoint, extra_args=("--nowebui",))
    try:
        server.start()
        client = Client(server.url)
        server.wait_ready(client)
        yield client
    finally:
        server.stop()


def xyz_script(api: Client) -> dict:
    answer = api.get("/sdapi/v1/script-info")
    assert answer.status == 200, answer.text
    (xyz,) = [s for s in answer.json() if s["name"] == "x/y/z plot" and not s["is_img2img"]]
    return xyz


def xyz_axis_choices(api: Client) -> list[str]:
    (x_type,) = [a for a in xyz_script(api)["args"] if a["label"] == "X type"]
    return x_type["choices"]


def xyz_script_args(api: Client, axis: str, values: str) -> list:
    """The plot script's arguments as this WebUI declares them (its ``run()`` takes 18 on A1111 and
    Forge, 22 on reForge), each at its UI default but the X axis, no legend, and the cell images
    returned beside the grid."""
    args, seen = [], set()
    for arg in xyz_script(api)["args"]:
        label, value = arg["label"], arg["value"]
        if label == "X type":
            value = arg["choices"].index(axis)
        elif label in ("Y type", "Z type"):  # index dropdowns: the API passes the index, the UI shows the label
            value = arg["choices"].index(value) if isinstance(value, str) else value
        elif label == "X values" and label not in seen:  # the text box; the dropdown of the same label follows
            value = values
        elif label in ("X values", "Y values", "Z values") and label in seen:  # the dropdowns
            value = value or []
        elif label == "Include Sub Images":
            value = True
        elif label == "Draw legend":
            value = False
        seen.add(label)
        args.append(value)
    return args


def assert_settings_listed(client: Client) -> None:
    answer = client.get("/sdapi/v1/options")
    assert answer.status == 200, answer.text
    options = answer.json()
    # numbers only: a server of yours (WEBUI_URL) may have changed them, and A1111 answers ints as floats
    assert isinstance(options.get("ipadapter_units"), int | float)
    assert isinstance(options.get("ipadapter_default_weight"), int | float)
    assert {"ipadapter_hires", "ipadapter_cache_size", "ipadapter_extra_folders"} <= set(options)


def assert_loopback_only(base_url: str) -> None:
    port = int(base_url.rsplit(":", 1)[1])
    addresses = listening_addresses(port)
    if addresses is None:
        pytest.skip("no /proc/net/tcp on this system: the listening addresses are read from Linux's /proc")
    assert addresses == {"127.0.0.1"}, f"the test server on port {port} listens on {sorted(addresses)}"


def test_the_api_only_server_listens_on_127_0_0_1_only(api):
    """With --nowebui the WebUI starts uvicorn with no host (every interface) unless told one."""
    assert_loopback_only(api.base_url)


def test_the_ui_server_listens_on_127_0_0_1_only(webui):
    if webui.mode != "root":
        pytest.skip("WEBUI_URL: a server started by you, not by the suite")
    assert_loopback_only(webui.client.base_url)


def test_settings_are_in_the_options(api):
    assert_settings_listed(api)


def test_settings_are_in_the_options_of_the_ui_server_too(webui):
    """Forge froze its options schema before any extension loaded, UI or not."""
    assert_settings_listed(webui.client)


def test_xyz_axes_are_listed(api):
    choices = xyz_axis_choices(api)
    assert [c for c in choices if c.startswith("[IP-Adapter]")] == AXES


def test_an_xyz_weight_axis_equals_separate_requests(api, model):
    unit = {"image": REFERENCE, "model": model, "weight": 1.0}
    script_args = xyz_script_args(api, "[IP-Adapter] Weight", "0, 0.8")
    grid = api.post("/sdapi/v1/txt2img", txt2img_payload(
        script_name="x/y/z plot", script_args=script_args, alwayson_scripts={SCRIPT_TITLE: {"args": [unit]}}))  # fmt: skip
    assert grid.status == 200, grid.text
    cells = [b for b in grid.json()["images"] if pixels(b).shape == (64, 64, 3)]  # the grid is larger
    assert len(cells) == 2, "expected the two cell images beside the grid"
    for weight, cell in zip((0.0, 0.8), cells, strict=True):
        alone = api.post("/sdapi/v1/txt2img", txt2img_payload(
            alwayson_scripts={SCRIPT_TITLE: {"args": [{**unit, "weight": weight}]}}))  # fmt: skip
        assert alone.status == 200, alone.text
        assert same_pixels(cell, alone.json()["images"][0]), f"cell at weight {weight}"
    assert not same_pixels(cells[0], cells[1])
