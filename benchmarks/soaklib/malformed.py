"""Requests that must be refused with HTTP 422 and a message naming the problem.

Each case is (name, path, body, a piece of text the 422's detail must contain). A case answered
200 (the request generated without the unit, or with something else than asked), 500, or a 422
that does not name its problem is a violation.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from .payloads import Catalog, References, plain, rectangle_mask, with_units

Case = tuple[str, str, dict, str]
TXT2IMG = "/sdapi/v1/txt2img"


def _positional(slot: int, value: Any) -> list:
    """The UI's argument list up to unit 1's ``slot`` (accordion on, unit 1 ticked, the fields
    before it empty, which their types allow), with ``value`` there; the WebUI keeps its UI
    defaults for the slots not sent. Slots: 0 enabled, 1 image, 2 more images, 3 model, 4 encoder,
    5 weight (``ipadapter_ext/ui/layout.py``; new fields are appended, so these stay)."""
    args: list[Any] = [True, True] + [None] * slot
    args[1 + slot] = value
    return args


def cases(rng: random.Random, catalog: Catalog, refs: References, size: int, steps: int) -> list[Callable[[], Case]]:
    base = plain(size, steps, prompt="soak malformed", seed=rng.randrange(1 << 30))
    model = rng.choice(catalog.clip_models)
    good = {"image": refs.take(), "model": model}

    def gen(name: str, detail: str, *units: Any) -> Callable[[], Case]:
        return lambda: (name, TXT2IMG, with_units(base, *units), detail)

    def positional(name: str, slot: int, value: Any, detail: str) -> Callable[[], Case]:
        body = {**base, "alwayson_scripts": {"IP-Adapter": {"args": _positional(slot, value)}}}
        return lambda: (name, TXT2IMG, body, detail)

    out = [
        lambda: (
            "positional text",
            TXT2IMG,
            {**base, "alwayson_scripts": {"IP-Adapter": {"args": ["hello"]}}},
            "must be true or false",
        ),
        lambda: (
            "positional number",
            TXT2IMG,
            {**base, "alwayson_scripts": {"IP-Adapter": {"args": [42]}}},
            "must be true or false",
        ),
        gen("unknown model", "unknown IP-Adapter model", {**good, "model": "soak-no-such-model"}),
        gen("weight not a number", "weight", {**good, "weight": "heavy"}),
        gen("unknown field", "colour", {**good, "colour": "red"}),
        gen("start after end", "is after end", {**good, "start": 0.8, "end": 0.2}),
        gen("image not base64", "not valid base64", {**good, "image": "not an image!"}),
        gen("black mask", "black everywhere", {**good, "mask": rectangle_mask(rng, size, size, black=True)}),
        gen("no reference", "no reference image", {"model": model}),
        gen("weight type", "weight_type", {**good, "weight_type": "sideways"}),
        lambda: (
            "encode unknown model",
            "/ipadapter/v1/encode",
            {"image": good["image"], "model": "soak-nope"},
            "unknown IP-Adapter model",
        ),
        lambda: ("faces without image", "/ipadapter/v1/faces", {"size": 224}, "faces:"),
    ]
    out += [
        positional("positional weight as text", 5, "0.5", "must be a number"),
        positional("positional enabled as text", 0, "yes", "must be true or false"),
        positional("positional model as number", 3, 42, "must be a text"),
        positional("positional image as number", 1, 42, "must be a base64 image"),
        positional("positional more images as text", 2, "abc", "must be a list"),
    ]
    if catalog.face_models:
        face = catalog.face_models[0]
        out += [
            gen("face without a face", "No face was found", {"image": refs.no_face, "model": face}),
            gen(
                "faceid with negative image",
                "FaceID model",
                {"image": refs.faces[0], "model": face, "negative_image": refs.faces[0]},
            ),
        ]
    return out


def draw(rng: random.Random, catalog: Catalog, refs: References, size: int, steps: int) -> Case:
    return rng.choice(cases(rng, catalog, refs, size, steps))()
