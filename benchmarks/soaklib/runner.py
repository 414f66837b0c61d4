"""Running a plan: N clients through the WebUI's queue, and the events that need it to themselves.

Most requests run side by side (the WebUI queues generations; the routes answer meanwhile). An
interrupt and a checkpoint switch act on whatever the server runs at that moment, so they take
the server to themselves: the clients finish what they sent, the event runs with the baseline
right after it, and the clients go on (``Gate``). Otherwise an interrupt could land on another
client's baseline, and a baseline could run on the second checkpoint, and the pixel checks would
report a fault that is not there.

Every answer becomes a :class:`Record` (kind, status, time, whether it was what the request was
meant to get); the resident memory of the WebUI process is sampled after each one.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import malformed, payloads
from .client import Answer, Http
from .payloads import Catalog, References, generation, pixels, plain, with_units
from .plan import GENERATIONS, Step

#: Values the "setting" events set (only settings the server lists are changed).
SETTINGS: dict[str, tuple] = {
    "ipadapter_cache_size": (0, 2, 32),
    "ipadapter_adapters_kept": (0, 1, 4),
    "ipadapter_encoders_kept": (0, 1, 2),
    "ipadapter_unload_after": (True, False, False),
    "ipadapter_offload_encoder": (True, False),
    "ipadapter_hires": (True, False),
    "ipadapter_default_weight": (0.8, 1.0),
}


@dataclass
class Config:
    size: int = 64
    steps: int = 3
    interrupt_steps: int = 24
    clients: int = 3


@dataclass
class Record:
    index: int
    kind: str
    status: int
    seconds: float
    ok: bool  # the answer the request was meant to get
    problem: str = ""
    same_pixels: bool | None = None  # fixed requests: equal to their first answer


@dataclass
class Events:
    counts: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1


class Gate:
    """Many ``shared()`` holders or one ``exclusive()`` one; a waiting exclusive holder goes first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Runner:
    def __init__(
        self, http: Http, catalog: Catalog, refs: References, config: Config, rss: Callable[[], int | None]
    ) -> None:
        self.http = http
        self.catalog = catalog
        self.refs = refs
        self.config = config
        self.rss = rss
        self.records: list[Record] = []
        self.memory: list[tuple[int, int]] = []  # (requests answered, resident bytes)
        self.events = Events()
        self.cache_reports: list[dict] = []
        self._lock = threading.Lock()
        self._gate = Gate()
        self._first: dict[str, np.ndarray] = {}
        fixed_model = next((n for n in catalog.clip_models if catalog.kind(n) == "resampler"), catalog.clip_models[0])
        self.baseline_body = plain(config.size, config.steps)
        self.fixed_bodies = [
            with_units(
                plain(config.size, config.steps, prompt="soak fixed unit", seed=2),
                {"image": image, "model": fixed_model, "weight": 0.8},
            )
            for image in refs.fixed
        ]

    # -- bookkeeping ------------------------------------------------------------------------
    def _record(self, step: Step, kind: str, answer: Answer, ok: bool, problem: str = "", same: bool | None = None):
        record = Record(step.index, kind, answer.status, answer.seconds, ok, problem, same)
        rss = self.rss()
        with self._lock:
            self.records.append(record)
            if rss is not None:
                self.memory.append((len(self.records), rss))
        return record

    def _expect_200(self, step: Step, kind: str, answer: Answer, images: int = 0) -> Answer:
        if answer.status != 200:
            self._record(step, kind, answer, False, f"HTTP {answer.status}: {answer.detail[:300]}")
        elif images and len((answer.body or {}).get("images") or []) < images:
            self._record(step, kind, answer, False, f"{len(answer.body.get('images') or [])} images for {images}")
        else:
            self._record(step, kind, answer, True)
        return answer

    def _fixed(self, step: Step, kind: str, name: str, body: dict) -> None:
        """A fixed request: 200 and the same pixels as its first answer."""
        answer = self.http.post("/sdapi/v1/txt2img", body)
        if answer.status != 200:
            self._record(step, kind, answer, False, f"HTTP {answer.status}: {answer.detail[:300]}", False)
            return
        got = pixels(answer.body["images"][0])
        same = bool(np.array_equal(got, self._first[name]))
        problem = "" if same else f"differs from the first {name} ({int((got != self._first[name]).sum())} values)"
        self._record(step, kind, answer, True, problem, same)

    # -- the run ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """The first answers of the fixed requests, which later ones must equal; then one request
        of each model and each generation mode, so that the memory measured from request N/6 on
        is that of a warm server (models loaded once, every code path run), not its warm-up."""
        fixed = [("baseline", self.baseline_body)] + [(f"fixed unit {i}", b) for i, b in enumerate(self.fixed_bodies)]
        for name, body in fixed:
            self.http.post("/ipadapter/v1/cache/clear")  # each first answer computed from cold caches
            answer = self.http.post("/sdapi/v1/txt2img", body)
            if answer.status != 200:
                raise RuntimeError(f"the first {name} request failed: HTTP {answer.status}: {answer.detail[:500]}")
            self._first[name] = pixels(answer.body["images"][0])
        rng = random.Random(0)
        warm = [("/sdapi/v1/txt2img", with_units(plain(self.config.size, self.config.steps, "soak warm-up"),
                                                 {"image": self.refs.faces[0] if n in self.catalog.face_models
                                                  else self.refs.fixed[0], "model": n}))
                for n in self.catalog.models]  # fmt: skip
        for mode in GENERATIONS:
            warm.append(generation(rng, self.catalog, self.refs, mode, self.config.size, self.config.steps, 1))
        for path, body in warm:
            answer = self.http.post(path, body)
            if answer.status != 200:
                raise RuntimeError(f"a warm-up request failed: HTTP {answer.status}: {answer.detail[:500]}")
        if self.catalog.face_models:
            self.http.post("/ipadapter/v1/faces", {"image": self.refs.faces[0]})

    def run(self, plan: list[Step]) -> None:
        pending = iter(plan)
        take = threading.Lock()

        def client() -> None:
            while True:
                with take:
                    step = next(pending, None)
                if step is None:
                    return
                exclusive = step.kind in ("interrupt", "switch")
                with self._gate.exclusive() if exclusive else self._gate.shared():
                    try:
                        self.execute(step)
                    except Exception as exc:  # a bug of the tool must not pass for a server fault
                        self._record(step, step.kind, Answer(-1, repr(exc), 0.0), False, f"soak tool error: {exc!r}")

        threads = [
            threading.Thread(target=client, name=f"soak-client-{i}", daemon=True) for i in range(self.config.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def execute(self, step: Step) -> None:
        rng = random.Random(step.seed)
        cfg = self.config
        if step.kind == "baseline":
            self._fixed(step, "baseline", "baseline", self.baseline_body)
        elif step.kind == "fixed unit":
            which = (step.index // 10) % len(self.fixed_bodies)
            self._fixed(step, "fixed unit", f"fixed unit {which}", self.fixed_bodies[which])
        elif step.kind in GENERATIONS:
            path, body = generation(rng, self.catalog, self.refs, step.kind, cfg.size, cfg.steps, step.seed)
            units = len(body.get("alwayson_scripts", {}).get("IP-Adapter", {}).get("args", []))
            self._expect_200(step, f"{step.kind} ({units} units)", self.http.post(path, body), body["batch_size"])
        elif step.kind == "malformed":
            name, path, body, detail = malformed.draw(rng, self.catalog, self.refs, cfg.size, cfg.steps)
            answer = self.http.post(path, body)
            ok = answer.status == 422 and detail in answer.detail
            problem = (
                "" if ok else f"{name}: wanted 422 naming '{detail}', got HTTP {answer.status}: {answer.detail[:300]}"
            )
            self._record(step, "malformed", answer, ok, problem)
        else:
            getattr(self, "_" + step.kind)(step, rng)

    def _encode(self, step: Step, rng: random.Random) -> None:
        model = rng.choice(self.catalog.clip_models + self.catalog.face_models)
        face = model in self.catalog.face_models
        image = rng.choice(self.refs.faces) if face else self.refs.take()
        answer = self._expect_200(
            step, "encode", self.http.post("/ipadapter/v1/encode", {"image": image, "model": model})
        )
        if answer.status == 200 and rng.random() < 0.5:
            unit = {"embeds": answer.body["embeds"], "model": model, "weight": round(rng.uniform(0.3, 1.2), 2)}
            body = with_units(plain(self.config.size, self.config.steps, "soak embeds", step.seed), unit)
            self._expect_200(step, "txt2img (embeds)", self.http.post("/sdapi/v1/txt2img", body), 1)

    def _faces(self, step: Step, rng: random.Random) -> None:
        image = rng.choice([*self.refs.faces, self.refs.no_face])
        self._expect_200(step, "faces", self.http.post("/ipadapter/v1/faces", {"image": image}))

    def _setting(self, step: Step, rng: random.Random) -> None:
        key = rng.choice(sorted(self.catalog.settings))
        value = rng.choice(SETTINGS[key])
        self.events.add("setting changes")
        self._expect_200(step, "setting", self.http.post("/sdapi/v1/options", {key: value}))

    def _refresh(self, step: Step, rng: random.Random) -> None:
        path = rng.choice(["/ipadapter/v1/models?refresh=true", "/ipadapter/v1/encoders?refresh=true", None])
        answer = self.http.post("/sdapi/v1/refresh-checkpoints") if path is None else self.http.get(path)
        self.events.add("model list refreshes")
        self._expect_200(step, "refresh", answer)

    def _cache(self, step: Step, rng: random.Random) -> None:
        clear = rng.random() < 0.35
        answer = self.http.post("/ipadapter/v1/cache/clear") if clear else self.http.get("/ipadapter/v1/cache")
        self._expect_200(step, "cache clear" if clear else "cache", answer)
        if answer.status == 200:
            with self._lock:
                self.cache_reports.append(answer.body.get("caches", {}))

    def _interrupt(self, step: Step, rng: random.Random) -> None:
        """A generation with a unit, interrupted as soon as it starts or midway; then the baseline."""
        path, body = generation(rng, self.catalog, self.refs, rng.choice(["txt2img", "hires"]),
                                self.config.size, self.config.interrupt_steps, step.seed)  # fmt: skip
        body["batch_size"] = 1
        if "alwayson_scripts" not in body:
            body = with_units(body, payloads.unit(rng, self.catalog, self.refs, False, False, 1))
        at_step = rng.choice([0, 1, self.config.interrupt_steps // 2])
        done: dict[str, Answer] = {}
        worker = threading.Thread(target=lambda: done.update(answer=self.http.post(path, body)), daemon=True)
        worker.start()
        posted = False
        while worker.is_alive() and not posted:
            progress = self.http.get("/sdapi/v1/progress?skip_current_image=true", timeout=60)
            state = progress.body.get("state", {}) if isinstance(progress.body, dict) else {}
            if state.get("job") and int(state.get("sampling_step") or 0) >= at_step:
                self.http.post("/sdapi/v1/interrupt")
                posted = True
            else:
                time.sleep(0.01)
        worker.join()
        self.events.add("interrupts posted during a generation" if posted else "interrupts too late (ended first)")
        self._expect_200(step, "interrupted generation", done["answer"])
        self._fixed(step, "baseline after interrupt", "baseline", self.baseline_body)

    def _switch(self, step: Step, rng: random.Random) -> None:
        """To the second checkpoint, a unit there, back, then the baseline."""
        first, second = self.catalog.checkpoints
        assert second is not None
        self.events.add("checkpoint switches")
        self._expect_200(
            step, "switch checkpoint", self.http.post("/sdapi/v1/options", {"sd_model_checkpoint": second})
        )
        answer = self.http.post("/sdapi/v1/txt2img", {**self.fixed_bodies[0], "prompt": "soak second checkpoint"})
        fits = answer.status == 200 or (answer.status == 422 and "fit" in answer.detail)
        self._record(step, "unit on the second checkpoint", answer, fits, "" if fits else answer.detail[:300])
        self._expect_200(step, "switch back", self.http.post("/sdapi/v1/options", {"sd_model_checkpoint": first}))
        self._fixed(step, "baseline after switch", "baseline", self.baseline_body)


def restore_settings(http: Http, settings: dict[str, Any]) -> None:
    if settings:
        http.post("/sdapi/v1/options", settings)


__all__ = ["SETTINGS", "Config", "Gate", "Record", "Runner", "restore_settings"]
