"""An API-only server (``--nowebui``): the WebUI imports its API models (freezing the options
schema) and builds the scripts' UI inside the API's constructor *before* ``on_before_ui`` and
before any ``on_ui_settings`` callback. The extension's settings and X/Y/Z axes must exist all
the same: both are registered when the script loads."""

from __future__ import annotations

from modules import script_callbacks, shared

from tests.test_xyz import LABELS, ours, plot  # noqa: F401 (plot is a fixture)


def test_xyz_axes_exist_when_the_script_is_loaded_before_any_ui(plot, webui):  # noqa: F811
    # the webui fixture loaded scripts/ipadapter.py after the plot script, as the WebUI does;
    # no before_ui callback has run
    assert [o.label for o in ours(plot)] == LABELS


def test_settings_exist_as_soon_as_the_script_is_loaded(webui):
    """An API-only server freezes the options schema of ``/sdapi/v1/options`` when it imports
    ``modules.api.models``, right after loading the scripts and before any UI callback: options
    registered later are never answered there (seen in the real A1111 1.10.1)."""
    assert script_callbacks.callbacks["ui_settings"] == []  # nothing waits for a UI build
    assert {"ipadapter_units", "ipadapter_default_weight", "ipadapter_hires", "ipadapter_cache_size",
            "ipadapter_extra_folders", "ipadapter_offload_encoder"} <= set(shared.opts.data_labels)  # fmt: skip
    assert shared.opts.ipadapter_units == 3


def test_loading_the_script_again_registers_each_setting_once(webui):
    """A UI reload re-imports the scripts: the options are replaced, not duplicated."""
    from ipadapter_ext.host.settings import register_settings

    before = dict(shared.opts.data_labels)
    register_settings()
    assert shared.opts.data_labels.keys() == before.keys()


def test_an_options_schema_frozen_before_the_script_loaded_is_extended(webui, monkeypatch):
    """Forge's built-in ControlNet imports ``modules.api.models`` before other extensions load, so
    its ``OptionsModel`` (the response model of ``GET /sdapi/v1/options``) was frozen without our
    settings, in the UI and with ``--nowebui`` (seen in the real Forge)."""
    import sys
    import types
    from typing import Optional

    import pydantic
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ipadapter_ext.host.settings import register_settings

    frozen = types.ModuleType("modules.api.models")
    field = (Optional[str], pydantic.Field(default="png"))  # noqa: UP045
    frozen.OptionsModel = pydantic.create_model("Options", samples_format=field)
    monkeypatch.setitem(sys.modules, "modules.api.models", frozen)
    register_settings()  # what loading the script does
    shared.opts.samples_format = "png"
    app = FastAPI()
    values = {"samples_format": "png", **{k: getattr(shared.opts, k) for k in shared.opts.data_labels}}
    app.add_api_route("/options", lambda: values, methods=["GET"], response_model=frozen.OptionsModel)
    answer = TestClient(app).get("/options").json()
    assert answer["samples_format"] == "png"  # the host's own fields stay
    assert answer["ipadapter_units"] == 3 and answer["ipadapter_default_weight"] == 1.0
    assert answer["ipadapter_hires"] is True
    before = frozen.OptionsModel
    register_settings()  # again (a UI reload): nothing left to add
    assert frozen.OptionsModel is before
