"""Callback registration on hosts whose ``script_callbacks`` take no ``name=`` keyword.

Forge Classic 1f95d717 (``modules/script_callbacks.py``: ``def on_cfg_denoiser(callback)`` and so on
for every ``on_*``) is built on an A1111 older than 1.8, where names did not exist; the keyword made
the script fail to load there, and the whole extension with it (found by the e2e suite in a real
copy). Here the doubles' registrations take the Classic signatures and the real script loads on
each host family, registering everything it registers on A1111 1.10.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from modules import script_callbacks

from ipadapter_ext.host.callbacks import register
from tests.a1111_env import make_webui

DOUBLES = Path(__file__).parent / "doubles"
KINDS = ("cfg_denoiser", "model_loaded", "script_unloaded", "app_started", "ui_settings", "before_ui")


def classic_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``on_*`` of the doubles as Forge Classic defines it: the callback and nothing else."""
    for kind in KINDS:

        def on(callback, _kind=kind):  # positional only in use: Classic's has the one parameter
            script_callbacks.callbacks[_kind].append((None, callback))

        monkeypatch.setattr(script_callbacks, f"on_{kind}", on)


def registered() -> dict[str, int]:
    return {kind: len(script_callbacks.callbacks[kind]) for kind in KINDS}


@pytest.mark.parametrize("family", ["a1111", "forge", "forge1"])
def test_the_script_loads_and_registers_the_same_callbacks_without_names(family, tmp_path, monkeypatch):
    if family != "a1111":
        monkeypatch.syspath_prepend(str(DOUBLES / family))
    webui = make_webui(tmp_path / "named", monkeypatch)
    next(webui)
    with_names = registered()
    names = {name for kind in KINDS for name, _ in script_callbacks.callbacks[kind]}
    webui.close()
    assert with_names["cfg_denoiser"] == 1 and with_names["app_started"] >= 1
    assert "ipadapter_cfg_denoiser" in names and "ipadapter_routes" in names  # named where the host takes names

    classic_registrations(monkeypatch)
    webui = make_webui(tmp_path / "classic", monkeypatch)
    next(webui)  # raised TypeError ("unexpected keyword argument 'name'") before
    try:
        assert registered() == with_names
    finally:
        webui.close()


def test_register_passes_the_name_only_where_the_registration_takes_it():
    calls = []

    def named(callback, *, name=None):
        calls.append(("named", name))

    def keywords(callback, **kwargs):
        calls.append(("keywords", kwargs.get("name")))

    def bare(callback):
        calls.append(("bare", None))

    for registration in (named, keywords, bare):
        register(registration, print, "ipadapter_x")
    assert calls == [("named", "ipadapter_x"), ("keywords", "ipadapter_x"), ("bare", None)]
