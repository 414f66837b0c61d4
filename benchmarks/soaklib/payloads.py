"""What the soak sends: reference images, face photos, masks, units and whole requests.

Images are drawn from seeds, so a run is reproducible, and small (64 px by default: the encoder
resizes to its own input anyway, and the run must be cheap on a CPU). A face photo is a bright
textured square on a dark background, what the tiny face pack of ``tests/face_onnx.py`` finds;
a real face pack may find nothing in it, and then the FaceID kinds are left out of the run.
"""

from __future__ import annotations

import base64
import io
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

FACE_KINDS = ("faceid", "faceid_plus", "portrait")


def png(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pixels(b64: str) -> np.ndarray:
    text = b64.split(",", 1)[1] if b64.startswith("data:") else b64
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def reference(seed: int, size: int = 64) -> str:
    """A distinct picture per seed: a coloured gradient at a seeded angle with seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    colour = rng.uniform(0, 1, 3)
    img = (ramp[..., None] * colour + rng.uniform(0, 0.3, (size, size, 3))).clip(0, 1)
    return png((img * 255).astype(np.uint8))


def face_photo(seed: int, width: int = 96, height: int = 80, face: bool = True) -> str:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 41, (height, width, 3))
    if face:
        side = int(rng.integers(height // 2, height - 8))
        x, y = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
        img[y : y + side, x : x + side] = rng.integers(180, 256, (side, side, 3))
    return png(img.astype(np.uint8))


def rectangle_mask(rng: random.Random, width: int, height: int, black: bool = False) -> str:
    mask = np.zeros((height, width), np.uint8)
    if not black:
        x1, y1 = rng.randrange(0, width // 2), rng.randrange(0, height // 2)
        x2, y2 = rng.randrange(x1 + 8, width + 1), rng.randrange(y1 + 8, height + 1)
        mask[y1:y2, x1:x2] = 255
    return png(np.stack([mask] * 3, -1))


@dataclass
class Catalog:
    """What the server offers, read once before the run."""

    models: dict[str, dict]  # name → its /ipadapter/v1/models entry (compatible ones only)
    choices: dict[str, list[str]]  # unit field → allowed values (weight types, modes, crops, combines)
    face_models: list[str] = field(default_factory=list)  # FaceID models whose photos have a face
    checkpoints: tuple[str, str | None] = ("", None)  # (the loaded one, the one switched to)
    settings: dict[str, Any] = field(default_factory=dict)  # our settings present, with their values

    @property
    def clip_models(self) -> list[str]:
        return [name for name, m in self.models.items() if m.get("kind") not in FACE_KINDS]

    def kind(self, name: str) -> str:
        return str(self.models[name].get("kind"))


class References:
    """The pool of distinct references, handed out in turn (the next one each time, round the pool),
    so that with a few hundred requests every one of them passes through the WebUI."""

    def __init__(self, count: int, size: int, seed: int) -> None:
        self.images = [reference(seed * 1000 + i, size) for i in range(count)]
        self.faces = [face_photo(seed * 1000 + i) for i in range(8)]
        self.no_face = face_photo(seed * 1000 + 99, face=False)
        #: The fixed unit's two references, never in the pool: it alternates between them, so that a
        #: cache answering one for the other (a key that misses what differs) shows as a change.
        self.fixed = (reference(seed * 1000 + 999_998, size), reference(seed * 1000 + 999_999, size))
        self.used: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> str:
        with self._lock:
            i = self._next % len(self.images)
            self._next += 1
            self.used.add(i)
        return self.images[i]


def unit(rng: random.Random, catalog: Catalog, refs: References, img2img: bool, inpaint: bool, batch: int) -> dict:
    """One random unit that must be accepted (every field within what its model allows)."""
    faces = catalog.face_models
    pool = catalog.clip_models + faces
    name = rng.choice(pool)
    kind = catalog.kind(name)
    u: dict[str, Any] = {"model": name, "weight": round(rng.uniform(0.2, 1.3), 2)}
    start = round(rng.uniform(0, 0.5), 2)
    u["start"], u["end"] = start, round(rng.uniform(start, 1.0), 2)
    if kind in FACE_KINDS:
        u["image"] = rng.choice(refs.faces)
        u["lora_strength"] = round(rng.uniform(0, 1), 2)
        if kind == "faceid_plus":
            u["faceid_v2_weight"] = round(rng.uniform(0.5, 2), 2)
        if rng.random() < 0.3:
            u["show_faces"] = True
    else:
        _clip_sources(u, rng, refs, img2img, batch)
        u["crop"] = rng.choice(catalog.choices.get("crop", ["center"]))
        if rng.random() < 0.3 and not u.get("image_from_init"):
            u["negative_image"] = refs.take()
        if rng.random() < 0.2:
            u["noise"] = round(rng.uniform(0.05, 0.5), 2)
    u["weight_type"] = rng.choice(catalog.choices.get("weight_type", ["linear"]))
    u["weight_mode"] = rng.choice(catalog.choices.get("weight_mode", ["V only"]))
    if rng.random() < 0.15:
        layers = int(catalog.models[name].get("layers") or 16)
        u["layer_weights"] = [round(rng.uniform(0, 1.5), 2) for _ in range(layers)]
    if inpaint and rng.random() < 0.4:
        u["mask_from_inpaint"] = True
        u["mask_invert"] = rng.random() < 0.3
    elif rng.random() < 0.25:
        u["mask"] = rectangle_mask(rng, 64, 64)
        u["mask_invert"] = rng.random() < 0.2
    if rng.random() < 0.1:
        u["attention_map"] = True
    return u


def _clip_sources(u: dict, rng: random.Random, refs: References, img2img: bool, batch: int) -> None:
    """Where a CLIP unit's references come from: one or several images (weighted, combined), or
    the img2img input images, one per generated image."""
    if img2img and rng.random() < 0.3:
        u["image_from_init"] = True
        return
    count = rng.choice((1, 1, 1, 2, 3))
    images = [refs.take() for _ in range(count)]
    u["image"] = images if count > 1 else images[0]
    if count > 1:
        if rng.random() < 0.5:
            u["image_weights"] = [round(rng.uniform(0.2, 1.0), 2) for _ in images]
        u["combine"] = rng.choice(["concat", "average", "norm average"])


def generation(
    rng: random.Random, catalog: Catalog, refs: References, mode: str, size: int, steps: int, seed: int
) -> tuple[str, dict]:
    """(path, body) of a random generation: ``mode`` is txt2img, hires, img2img or inpaint."""
    batch = rng.choice((1, 1, 2, 3))
    body: dict[str, Any] = {
        "prompt": rng.choice(["a cat", "a house by a lake", "portrait, photo", "abstract shapes"]),
        "negative_prompt": rng.choice(["", "blurry"]),
        "steps": steps,
        "width": size,
        "height": size,
        "seed": seed,
        "batch_size": batch,
        "cfg_scale": 5,
        "sampler_name": "Euler",
        "scheduler": "Automatic",
    }
    img2img = mode in ("img2img", "inpaint")
    if mode == "hires":
        body.update(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=max(1, steps // 2), denoising_strength=0.5,
                    hr_upscaler="Latent", hr_additional_modules=["Use same choices"])  # fmt: skip
        # (Forge's API fails with a 500 on hires without that field; A1111 ignores it)
    if img2img:
        inits = [refs.take() for _ in range(batch if rng.random() < 0.5 else 1)]
        body.update(init_images=inits, denoising_strength=0.6)
    if mode == "inpaint":
        body.update(mask=rectangle_mask(rng, size, size), inpaint_full_res=rng.random() < 0.5,
                    inpaint_full_res_padding=8, inpainting_fill=1, mask_blur=2)  # fmt: skip
    units = [unit(rng, catalog, refs, img2img, mode == "inpaint", batch) for i in range(rng.choice((0, 1, 1, 2, 3)))]
    if units:
        body["alwayson_scripts"] = {"IP-Adapter": {"args": units}}
    return ("/sdapi/v1/img2img" if img2img else "/sdapi/v1/txt2img"), body


def plain(size: int, steps: int, prompt: str = "soak baseline", seed: int = 1) -> dict:
    return {"prompt": prompt, "steps": steps, "width": size, "height": size, "seed": seed, "cfg_scale": 5,
            "sampler_name": "Euler", "scheduler": "Automatic", "batch_size": 1}  # fmt: skip


def with_units(body: dict, *units: Any) -> dict:
    return {**body, "alwayson_scripts": {"IP-Adapter": {"args": list(units)}}}


class WithoutUnits:
    """An ``Http`` that sends every generation without its IP-Adapter units: the control run
    (``--control``), whose memory curve is the host's own under the same interrupts, switches
    and settings, to set beside a run with units when memory grows."""

    def __init__(self, http: Any) -> None:
        self.http = http

    def get(self, path: str, timeout: float | None = None) -> Any:
        return self.http.get(path, timeout)

    def post(self, path: str, body: Any = None, timeout: float | None = None) -> Any:
        if path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img") and isinstance(body, dict):
            scripts = {k: v for k, v in (body.get("alwayson_scripts") or {}).items() if k != "IP-Adapter"}
            body = {**body, "alwayson_scripts": scripts}
        return self.http.post(path, body, timeout)
