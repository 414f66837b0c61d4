"""``"args": UNIT`` reaches the WebUI's route as ``"args": [UNIT]``; everything else is untouched."""

from __future__ import annotations

from fastapi import Body, FastAPI
from fastapi.testclient import TestClient

from ipadapter_ext.api.bare_unit import install, wrap_bare_unit


def _app():
    app = FastAPI()
    seen = []

    def endpoint(body: dict = Body(...)):  # noqa: B008
        seen.append(body)
        return {"ok": True}

    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/other"):
        app.add_api_route(path, endpoint, methods=["POST"])
    return app, seen


def test_bare_unit_becomes_a_list_only_on_the_generation_routes():
    app, seen = _app()
    install(app)
    install(app)  # idempotent
    client = TestClient(app)
    unit = {"model": "m", "weight": 0.5}
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        assert (
            client.post(path, json={"prompt": "p", "alwayson_scripts": {"IP-Adapter": {"args": unit}}}).status_code
            == 200
        )
        assert seen[-1]["alwayson_scripts"]["IP-Adapter"]["args"] == [unit]
    client.post("/other", json={"alwayson_scripts": {"IP-Adapter": {"args": unit}}})
    assert seen[-1]["alwayson_scripts"]["IP-Adapter"]["args"] == unit
    listed = {"prompt": "p", "alwayson_scripts": {"ip-adapter": {"args": [unit, unit]}, "Other": {"args": {"x": 1}}}}
    client.post("/sdapi/v1/txt2img", json=listed)
    assert seen[-1] == listed  # lists and other scripts are left alone


def test_rewrite_rules():
    assert wrap_bare_unit(b"not json") is None
    assert wrap_bare_unit(b'{"prompt": "x"}') is None
    assert wrap_bare_unit(b'{"alwayson_scripts": {"ip-adapter": {"args": [{}]}}}') is None
    assert wrap_bare_unit(b'{"alwayson_scripts": {"IP-ADAPTER": {"args": {"a": 1}}}}') == (
        b'{"alwayson_scripts": {"IP-ADAPTER": {"args": [{"a": 1}]}}}'
    )
