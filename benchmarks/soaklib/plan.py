"""The schedule of a run, drawn from the seed before it starts: which kind each request is.

Every 10th request (0, 10, 20 …) is the fixed no-unit baseline and every 10th from 5 on the fixed
one-unit request; the rest are drawn by weight. Each request carries its own seed, so what it
sends (kinds, units, fields) does not depend on which client runs it or when; only which of the
pool's references it gets does, as they are handed out in turn (``payloads.References``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: kind → relative weight among the drawn requests.
WEIGHTS = {
    "txt2img": 16,
    "hires": 7,
    "img2img": 9,
    "inpaint": 9,
    "encode": 5,
    "faces": 3,
    "malformed": 10,
    "interrupt": 5,
    "switch": 3,
    "setting": 6,
    "refresh": 5,
    "cache": 3,
}
GENERATIONS = ("txt2img", "hires", "img2img", "inpaint")


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    seed: int


def draw_plan(count: int, seed: int, exclude: tuple[str, ...] = ()) -> list[Step]:
    """``count`` steps; kinds in ``exclude`` (no second checkpoint, no face analysis) are not drawn."""
    rng = random.Random(seed)
    kinds = [k for k in WEIGHTS if k not in exclude]
    weights = [WEIGHTS[k] for k in kinds]
    steps = []
    for index in range(count):
        if index % 10 == 0:
            kind = "baseline"
        elif index % 10 == 5:
            kind = "fixed unit"
        else:
            kind = rng.choices(kinds, weights)[0]
        steps.append(Step(index, kind, rng.randrange(1 << 31)))
    return steps
