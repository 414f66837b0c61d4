"""``GET /ipadapter/v1/cache`` and ``POST /cache/clear``, the cache settings, and the model routes
during a generation (issue 19, item 5): they wait for the WebUI's queue, never move a model a
generation is preparing, and threads that miss a cache together load a model once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from modules import call_queue, script_callbacks, shared

from ipadapter_ext.core.encode.embeds import unpack_embeds
from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.host import a1111
from tests.a1111_env import PLUS, image, job, run_job, unit_args
from tests.test_faceid import FACE, png_b64_of, write_faceid_files
from tests.test_model_cache import count_loads


def client() -> TestClient:
    app = FastAPI()
    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(None, app)
    return TestClient(app)


@torch.no_grad()
def test_cache_reports_what_is_held_and_clear_empties_it(webui):
    http = client()
    empty = http.get("/ipadapter/v1/cache").json()["caches"]
    assert {
        name: empty[name]["entries"] for name in ("adapters", "encoders", "embeddings", "kv", "faces")
    } == dict.fromkeys(("adapters", "encoders", "embeddings", "kv", "faces"), 0)
    assert (empty["adapters"]["max_entries"], empty["encoders"]["max_entries"]) == (4, 2)
    assert empty["embeddings"]["max_entries"] == 32 and empty["faces"]["max_entries"] == 32
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    held = http.get("/ipadapter/v1/cache").json()["caches"]
    assert held["adapters"]["files"] == ["tiny-plus.safetensors"] and held["encoders"]["files"] == [
        "tiny-clip.safetensors"
    ]
    assert held["adapters"]["bytes"] > 0 and held["encoders"]["bytes"] > held["embeddings"]["bytes"] > 0
    assert held["embeddings"]["entries"] == 1
    assert held["kv"]["entries"] == 0  # the generation is over: its K/V went with it
    answer = http.post("/ipadapter/v1/cache/clear").json()
    assert answer["cleared"] == {"adapters": 1, "encoders": 1, "embeddings": 1, "faces": 0}
    assert all(answer["caches"][name]["entries"] == 0 for name in ("adapters", "encoders", "embeddings"))


@torch.no_grad()
def test_the_kv_of_a_running_generation_is_reported_and_freed_at_its_end(webui):
    from ipadapter_ext.host.a1111 import generation

    seen = {}
    original = generation.on_cfg_denoiser

    def spy(params):
        original(params)
        seen.setdefault("kv", a1111.engine().cache_report()["kv"])

    script_callbacks.callbacks["cfg_denoiser"][:] = [("spy", spy)]
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert seen["kv"]["entries"] == 1 and seen["kv"]["bytes"] > 0
    assert a1111.engine().cache_report()["kv"]["entries"] == 0  # freed without waiting for the garbage collector


@torch.no_grad()
def test_settings_bound_the_caches_and_can_empty_them_after_each_generation(webui, monkeypatch):
    from ipadapter_ext.host.models import cache_size_changed

    loads = count_loads(monkeypatch)
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    shared.opts.ipadapter_cache_size = 0
    cache_size_changed()
    engine = a1111.engine()
    assert len(engine.embeddings) == 0 and len(engine.adapters) == 1
    shared.opts.ipadapter_unload_after = True
    cache_size_changed()  # turning it on empties them at once
    assert len(engine.adapters) == len(engine.encoders) == 0
    first = run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert len(engine.adapters) == len(engine.encoders) == 0  # emptied after the generation
    again = run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert torch.equal(first, again) and loads["tiny-plus.safetensors"] == 3


@torch.no_grad()
def test_encode_waits_for_the_generation_queue(webui):
    """The model routes hold the WebUI's queue lock, as its own txt2img and interrogate routes do:
    while a generation runs (holding it), ``/encode`` does not touch the models."""
    http = client()
    body = {"image": png_b64_of(image(1)), "model": "tiny-plus"}
    assert http.post("/ipadapter/v1/encode", json=body).status_code == 200
    done = threading.Event()
    answers = []

    def encode():
        answers.append(http.post("/ipadapter/v1/encode", json=body).status_code)
        done.set()

    with call_queue.queue_lock:  # a generation holds the queue
        worker = threading.Thread(target=encode)
        worker.start()
        assert not done.wait(0.5)
    worker.join(30)
    assert answers == [200]


@pytest.fixture
def faces(webui, tmp_path):
    from tests.a1111_env import attn2_widths

    write_faceid_files(tmp_path / "models", attn2_widths(webui.unet))
    a1111.engine().registry.refresh()
    return webui


@torch.no_grad()
def test_encode_and_faces_hammered_during_a_generation(faces, monkeypatch):
    """Route threads hit ``/encode`` (two adapters, one encoder) and ``/faces`` while a generation
    with a FaceID-Plus and a Plus unit prepares and samples from cold caches, outside the queue
    lock (the worst case: a host without one). Loads are slowed so that every thread misses at
    once. The generation's image equals the one made alone, every file is loaded once, every
    route answer is 200 and the same for the same request."""
    webui = faces
    units = unit_args(PLUS, {"image": FACE, "model": "tiny-faceid-plus", "weight": 0.7})
    alone = run_job(webui.script, units, job(webui.model))
    engine = a1111.engine()
    engine.clear_caches()
    sessions_before = engine.faces.sessions.loads
    loads = count_loads(monkeypatch)
    for cls in (IPAdapterModel, ClipVisionEncoder):
        counted = cls.from_file.__func__

        def slow(klass, *args, _counted=counted, **kw):
            time.sleep(0.3)
            return _counted(klass, *args, **kw)

        monkeypatch.setattr(cls, "from_file", classmethod(slow))
    start = threading.Barrier(5)
    answers: Counter = Counter()
    bodies: dict[str, list] = {"plus": [], "faces": []}
    requests = {
        "plus": ("/ipadapter/v1/encode", {"image": png_b64_of(image(1)), "model": "tiny-plus"}),
        "base": ("/ipadapter/v1/encode", {"image": png_b64_of(image(2)), "model": "tiny-base"}),
        "faces": ("/ipadapter/v1/faces", {"image": png_b64_of(FACE)}),
    }

    def hammer(name: str) -> None:
        http = client()
        path, body = requests[name]
        start.wait()
        for _ in range(4):
            answer = http.post(path, json=body)
            answers[(name, answer.status_code)] += 1
            if name in bodies:
                bodies[name].append(answer.json())

    threads = [threading.Thread(target=hammer, args=(n,)) for n in ("plus", "plus", "base", "faces")]
    for t in threads:
        t.start()
    start.wait()
    hammered = run_job(webui.script, units, job(webui.model))
    for t in threads:
        t.join(120)
    assert torch.equal(hammered, alone)
    assert answers == {("plus", 200): 8, ("base", 200): 4, ("faces", 200): 4}
    # the same tokens every time (the blob's header order is the safetensors writer's own)
    first = unpack_embeds(bodies["plus"][0]["embeds"])
    for body in bodies["plus"][1:]:
        again = unpack_embeds(body["embeds"])
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert all(b == bodies["faces"][0] for b in bodies["faces"])
    assert loads == {
        "tiny-plus.safetensors": 1,
        "tiny-base.bin": 1,
        "tiny-faceid-plus.safetensors": 1,
        "tiny-clip.safetensors": 1,
    }
    assert engine.faces.sessions.loads - sessions_before == 2  # the detector and the recogniser, once each
