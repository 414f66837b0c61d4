"""The read-only ``/ipadapter/v1/*`` routes on a bare FastAPI app, over tiny model files on disk."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

import ipadapter_ext
from ipadapter_ext.api import routes
from ipadapter_ext.api.routes import IMAGE_DESCRIPTION, register_routes
from ipadapter_ext.core.engine import Engine
from ipadapter_ext.core.load import registry as registry_module
from ipadapter_ext.core.load.compat import UNetSignature
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.core.load.registry import ModelRegistry
from ipadapter_ext.schema import DEFAULTS, IPAdapterUnit
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths
from tests.test_encoder import _save, _tiny_model

CTX = 48
WIDTHS = tiny_widths(SD15_WIDTHS)
SIGNATURE = UNetSignature(CTX, WIDTHS)
PATHS = ("/ipadapter/v1/version", "/ipadapter/v1/models", "/ipadapter/v1/encoders", "/ipadapter/v1/schema")
UNIT_FIELDS = ("enabled", "image", "model", "encoder", "weight", "start", "end", "crop")


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """The model folders, written once: two adapters, a corrupt adapter, an encoder, a corrupt encoder."""
    root = tmp_path_factory.mktemp("template")
    adapters, encoders = root / "ipadapter", root / "clip_vision"
    adapters.mkdir()
    encoders.mkdir()
    save_adapter_tensors(adapter_tensors(adapter_shapes("base", CTX, WIDTHS, 40), seed=1), adapters / "fit.safetensors")
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("base", 64, WIDTHS, 40), seed=2), adapters / "other-width.safetensors"
    )
    (adapters / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    _save(_tiny_model(seed=3), encoders / "tiny-clip.safetensors")
    (encoders / "broken-clip.safetensors").write_bytes(b"\x00" * 16)
    return root


@pytest.fixture
def folders(template, tmp_path) -> SimpleNamespace:
    root = tmp_path / "models"
    shutil.copytree(template, root)
    return SimpleNamespace(root=root, adapters=root / "ipadapter", encoders=root / "clip_vision")


def make_client(
    folders: SimpleNamespace, signature: Callable[[], UNetSignature | None] = lambda: SIGNATURE
) -> tuple[TestClient, Engine]:
    engine = Engine(ModelRegistry([folders.adapters], [folders.encoders]))
    app = FastAPI()
    register_routes(app, lambda: engine, signature)
    return TestClient(app), engine


def get(client: TestClient, path: str, **params) -> dict:
    response = client.get(f"/ipadapter/v1/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


def test_version_is_the_package_version(folders):
    client, _ = make_client(folders)
    assert get(client, "version") == {"version": ipadapter_ext.__version__}


def test_models_list_detected_fields_and_fit_to_the_checkpoint(folders):
    client, engine = make_client(folders)
    body = get(client, "models")
    assert list(body) == ["models"]
    assert [m["name"] for m in body["models"]] == ["broken", "fit", "other-width"]
    models = by_name(body["models"])
    expected_keys = {"name", "file", "description", "error", "kind", "variant", "base", "context_dim", "layers"}
    expected_keys |= {"tokens", "encoder", "compatible", "reason"}
    assert all(set(m) == expected_keys for m in models.values())

    fit = models["fit"]
    assert fit == {
        "name": "fit",
        "file": "fit.safetensors",
        "description": engine.registry.adapter("fit").info.describe(),
        "error": None,
        "kind": "image",
        "variant": "base",
        "base": "SD1.5-shaped (context 48)",
        "context_dim": CTX,
        "layers": len(WIDTHS),
        "tokens": 4,
        "encoder": "a CLIP vision encoder with 40-wide image embeds",
        "compatible": True,
        "reason": None,
    }

    other = models["other-width"]
    assert other["context_dim"] == 64 and other["error"] is None
    assert other["compatible"] is False
    assert "'other-width'" in other["reason"] and "64 wide" in other["reason"] and "is 48" in other["reason"]


def test_an_undetected_file_is_listed_with_its_error_and_no_detected_fields(folders):
    client, _ = make_client(folders)
    broken = by_name(get(client, "models")["models"])["broken"]
    assert broken["file"] == "broken.safetensors"
    assert broken["error"] and "broken.safetensors" in broken["error"]
    assert broken["description"] == broken["error"]
    for key in ("kind", "variant", "base", "context_dim", "layers", "tokens", "encoder", "compatible", "reason"):
        assert broken[key] is None, key


def test_compatible_is_null_when_no_checkpoint_is_loaded(folders):
    client, _ = make_client(folders, signature=lambda: None)
    models = get(client, "models")["models"]
    assert [m["compatible"] for m in models] == [None, None, None]
    assert [m["reason"] for m in models] == [None, None, None]
    assert by_name(models)["fit"]["context_dim"] == CTX  # detection is still reported


def test_compatibility_follows_the_checkpoint_loaded_now(folders):
    loaded: list[UNetSignature | None] = [SIGNATURE]
    client, _ = make_client(folders, signature=lambda: loaded[0])
    first = by_name(get(client, "models")["models"])
    loaded[0] = UNetSignature(64, WIDTHS, label="a 64-wide test model")
    second = by_name(get(client, "models")["models"])
    assert (first["fit"]["compatible"], first["other-width"]["compatible"]) == (True, False)
    assert (second["fit"]["compatible"], second["other-width"]["compatible"]) == (False, True)
    assert "a 64-wide test model" in second["fit"]["reason"]


def test_encoders_list_detected_shapes(folders):
    client, engine = make_client(folders)
    body = get(client, "encoders")
    assert list(body) == ["encoders"]
    encoders = by_name(body["encoders"])
    assert list(encoders) == ["broken-clip", "tiny-clip"]
    assert encoders["tiny-clip"] == {
        "name": "tiny-clip",
        "file": "tiny-clip.safetensors",
        "description": engine.registry.encoder("tiny-clip").spec.describe(),
        "error": None,
        "hidden_size": 128,
        "projection_dim": 40,
        "image_size": 224,
        "family": "clip",
    }
    broken = encoders["broken-clip"]
    assert broken["file"] == "broken-clip.safetensors" and "broken-clip.safetensors" in broken["error"]
    assert broken["description"] == broken["error"]
    assert (broken["hidden_size"], broken["projection_dim"], broken["image_size"]) == (None, None, None)


def test_no_route_reveals_a_server_path(folders):
    client, _ = make_client(folders)
    secrets = {str(folders.root), str(folders.root.resolve()), folders.root.as_posix()}
    for path in PATHS:
        text = client.get(path, params={"refresh": True} if path.endswith(("models", "encoders")) else None).text
        assert not any(secret in text for secret in secrets), path


def test_error_texts_quoting_a_full_path_are_scrubbed(folders, monkeypatch):
    def fail(real: Path):
        raise RuntimeError(f"failed to map {real}")

    monkeypatch.setattr(registry_module, "_detect_adapter", fail)
    client, engine = make_client(folders)
    raw = engine.registry.adapter("fit").error
    assert str(folders.adapters.resolve()) in raw  # the registry's own text does quote the path

    response = client.get("/ipadapter/v1/models")
    assert str(folders.root.resolve()) not in response.text and str(folders.root) not in response.text
    fit = by_name(response.json()["models"])["fit"]
    assert f"failed to map {Path('ipadapter') / 'fit.safetensors'}" in fit["error"]
    assert fit["description"] == fit["error"]


def test_refresh_picks_up_a_file_added_after_the_first_scan(folders):
    client, _ = make_client(folders)
    assert [m["name"] for m in get(client, "models")["models"]] == ["broken", "fit", "other-width"]
    save_adapter_tensors(
        adapter_tensors(adapter_shapes("base", CTX, WIDTHS, 40), seed=5), folders.adapters / "late.safetensors"
    )
    assert "late" not in by_name(get(client, "models")["models"])  # the scan is cached until asked
    late = by_name(get(client, "models", refresh=True)["models"])["late"]
    assert late["file"] == "late.safetensors" and late["compatible"] is True


def test_registering_twice_adds_each_route_once(folders):
    engine = Engine(ModelRegistry([folders.adapters], [folders.encoders]))
    app = FastAPI()
    register_routes(app, lambda: engine, lambda: SIGNATURE)
    register_routes(app, lambda: engine, lambda: None)
    paths = [getattr(route, "path", None) for route in app.routes]
    assert {p: paths.count(p) for p in PATHS} == dict.fromkeys(PATHS, 1)
    # The first registration's providers answer: the second one added nothing.
    fit = by_name(TestClient(app).get("/ipadapter/v1/models").json()["models"])["fit"]
    assert fit["compatible"] is True


def test_schema_describes_one_unit_with_its_defaults(folders):
    client, _ = make_client(folders)
    schema = get(client, "schema")
    props = schema["properties"]
    assert set(UNIT_FIELDS) <= set(props)
    for field in UNIT_FIELDS:
        default = getattr(DEFAULTS, field)
        expected = default.value if isinstance(default, Enum) else default
        assert props[field].get("default") == expected, field
    assert props["image"]["description"] == IMAGE_DESCRIPTION
    assert (props["weight"]["minimum"], props["weight"]["maximum"]) == (-1.0, 3.0)
    assert props["enabled"]["type"] == "boolean" and props["model"]["type"] == "string"
    assert get(client, "schema") == schema


def test_schema_route_does_not_alter_the_models_own_schema(folders):
    client, _ = make_client(folders)
    get(client, "schema")
    own = IPAdapterUnit.model_json_schema() if hasattr(IPAdapterUnit, "model_json_schema") else IPAdapterUnit.schema()
    assert "description" not in own["properties"]["image"]  # pydantic 1 caches and shares this dict


def test_a_typed_image_field_keeps_its_own_schema(monkeypatch):
    class TypedUnit(BaseModel):
        image: str | list[str] | None = None

    monkeypatch.setattr(routes, "IPAdapterUnit", TypedUnit)
    assert "description" not in routes.unit_schema()["properties"]["image"]


def test_openapi_document_lists_the_routes_and_the_refresh_parameter(folders):
    client, _ = make_client(folders)
    response = client.get("/openapi.json")  # the WebUI's /docs page breaks if this raises
    assert response.status_code == 200, response.text
    paths = response.json()["paths"]
    assert set(PATHS) <= set(paths)
    params = {p["name"]: p for p in paths["/ipadapter/v1/models"]["get"].get("parameters", [])}
    assert params["refresh"]["in"] == "query" and params["refresh"]["schema"]["default"] is False
