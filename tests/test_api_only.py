"""An API-only server (``--nowebui``): the WebUI builds the scripts' UI inside the API's
constructor, *before* ``on_before_ui`` runs, and may never run ``on_ui_settings`` callbacks. The
extension's X/Y/Z axes and settings must exist all the same."""

from __future__ import annotations

from fastapi import FastAPI
from modules import script_callbacks, shared

from tests.test_xyz import LABELS, ours, plot  # noqa: F401 (plot is a fixture)


def test_xyz_axes_exist_when_the_script_is_loaded_before_any_ui(plot, webui):  # noqa: F811
    # the webui fixture loaded scripts/ipadapter.py after the plot script, as the WebUI does;
    # no before_ui callback has run
    assert [o.label for o in ours(plot)] == LABELS


def test_settings_exist_after_app_start_without_a_ui_build(webui):
    assert "ipadapter_units" not in shared.opts.data_labels  # no on_ui_settings callback has run
    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(None, FastAPI())
    assert {"ipadapter_units", "ipadapter_default_weight", "ipadapter_hires"} <= set(shared.opts.data_labels)
    assert shared.opts.ipadapter_units == 3


def test_a_ui_build_then_app_start_registers_the_settings_once(webui, monkeypatch):
    calls = []
    real = shared.opts.add_option
    monkeypatch.setattr(shared.opts, "add_option", lambda key, info: (calls.append(key), real(key, info)))
    for _name, callback in script_callbacks.callbacks["ui_settings"]:
        callback()
    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(None, FastAPI())
    assert calls.count("ipadapter_units") == 1
