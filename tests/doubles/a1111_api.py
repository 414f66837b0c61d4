"""A double of the A1111 1.10.1 HTTP API (``modules/api/api.py``) over the sampling doubles, for
running ``benchmarks/soak.py`` in CI.

It serves what the soak tool calls, the way the real API does it:

* ``POST /sdapi/v1/txt2img|img2img``: the request's ``alwayson_scripts`` args copied slot by slot
  over the script's UI defaults (``Api.init_script_args``), the job run under
  ``modules.call_queue.queue_lock`` between ``shared.state.begin()`` and ``end()``, through the
  real ``scripts/ipadapter.py`` and the sampling doubles (``webui_sampling.run_job``), with
  ``p.is_api`` set. Images come back as base64 PNG with the infotexts in ``info``.
* errors as ``handle_exception`` answers them: an ``HTTPException`` with its status and
  ``detail``, anything else a 500 with its traceback printed to the log;
* ``POST /sdapi/v1/interrupt`` (``shared.state.interrupt()``), ``GET /sdapi/v1/progress``;
* ``GET|POST /sdapi/v1/options`` (``sd_model_checkpoint`` switches the model under the queue lock
  and fires the model-loaded callbacks; other keys run their ``onchange``), ``GET
  /sdapi/v1/sd-models``, ``POST /sdapi/v1/refresh-checkpoints``;
* the extension's own routes, registered by its app-started callback as in the WebUI.

The "checkpoints" are two tiny ldm UNets with different weights. The model folder holds tiny
adapters of several kinds, a CLIP encoder and, with onnxruntime, a tiny face pack.

Run: ``python -m tests.doubles.a1111_api --port 7861 --folder /tmp/soak [--fault NAME]``; faults
(``tests/soak_faults.py``) exist only for the tests that show the soak's checks catch them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import io
import json
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOUBLES = str(Path(__file__).resolve().parent)
for entry in (str(REPO), DOUBLES):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import torch  # noqa: E402
from modules import call_queue, script_callbacks, shared  # noqa: E402
from PIL import Image  # noqa: E402

from ipadapter_ext.ui.layout import UNIT_FIELDS  # noqa: E402
from tests.doubles.webui_sampling import Processing, run_job  # noqa: E402
from tests.ui_values import UI_VALUES  # noqa: E402

SCRIPT_TITLE = "IP-Adapter"
CHECKPOINTS = ("tiny-a.safetensors", "tiny-b.safetensors")
UNITS = 3


class ApiProcessing(Processing):
    """``StableDiffusionProcessing``'s attributes read by the extension's img2img and inpaint code."""

    def __init__(self, **kw: Any) -> None:
        extra = {k: kw.pop(k) for k in list(kw) if k in _EXTRA}
        super().__init__(**kw)
        for name, default in _EXTRA.items():
            setattr(self, name, extra.get(name, default))


_EXTRA = {
    "prompt": "",
    "all_prompts": None,
    "width": 64,
    "height": 64,
    "init_images": None,
    "image_mask": None,
    "inpaint_full_res": False,
    "inpainting_mask_invert": 0,
    "mask_round": True,
    "paste_to": None,
}


def write_models(folder: Path) -> None:
    """Tiny adapters (base, plus, full-face, FaceID, FaceID-Plus v2), a CLIP encoder and, with
    onnxruntime, a tiny face pack, sized to the tiny UNet."""
    from ipadapter_ext.core.load.formats import save_adapter_tensors
    from tests.a1111_env import CTX, attn2_widths, tiny_unet
    from tests.factories import adapter_shapes, adapter_tensors
    from tests.test_encoder import _save, _tiny_model

    widths = attn2_widths(tiny_unet())
    adapters = folder / "models" / "ipadapter"
    adapters.mkdir(parents=True, exist_ok=True)
    (folder / "models" / "clip_vision").mkdir(parents=True, exist_ok=True)
    kinds = {
        "tiny-base.safetensors": ("base", 40, {}),
        "tiny-plus.safetensors": ("resampler", 128, {"tokens": 4, "res_dim": 32, "inner": 64}),
        "tiny-full.bin": ("full", 128, {}),
    }
    for seed, (name, (kind, enc, kw)) in enumerate(kinds.items(), start=1):
        save_adapter_tensors(adapter_tensors(adapter_shapes(kind, CTX, widths, enc, **kw), seed=seed), adapters / name)
    _save(_tiny_model(seed=4), folder / "models" / "clip_vision" / "tiny-clip.safetensors")
    if importlib.util.find_spec("onnxruntime") is not None:
        from tests.face_onnx import write_pack

        write_pack(folder / "models" / "insightface" / "models" / "buffalo_l", with_landmark=False)
        faceid = adapter_shapes("faceid", CTX, widths, 0, lora_rank=4, tokens=4)
        save_adapter_tensors(adapter_tensors(faceid, seed=21), adapters / "tiny-faceid.safetensors")
        plus = adapter_shapes("faceid_plus", CTX, widths, 128, lora_rank=4, tokens=4)
        save_adapter_tensors(adapter_tensors(plus, seed=22), adapters / "tiny-faceid-plusv2.bin")


class Server:
    """The WebUI process: its models, its script, its queue."""

    def __init__(self, folder: Path) -> None:
        import modules.paths_internal as paths_internal

        from tests.a1111_env import sd_model, tiny_unet

        shared.reset()
        script_callbacks.callbacks.clear()
        paths_internal.models_path = str(folder / "models")
        self.models = {name: sd_model(tiny_unet(seed=seed)) for seed, name in enumerate(CHECKPOINTS)}
        self.checkpoint = CHECKPOINTS[0]
        shared.sd_model = self.models[self.checkpoint]
        spec = importlib.util.spec_from_file_location("ipadapter", REPO / "scripts" / "ipadapter.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.script = module.IPAdapterScript()
        self.defaults = [False]
        for i in range(UNITS):
            self.defaults += [True if (name == "enabled" and i == 0) else UI_VALUES.get(name) for name in UNIT_FIELDS]
        self.defaults += [False, False]  # the accordion's "show maps" and "show faces" toggles

    # -- options ------------------------------------------------------------------------------
    def options(self) -> dict:
        labels = shared.opts.data_labels
        out = {key: getattr(shared.opts, key, info.default) for key, info in labels.items()}
        out["sd_model_checkpoint"] = self.checkpoint
        return out

    def set_options(self, body: dict) -> None:
        from fastapi import HTTPException

        for key, value in body.items():
            if key == "sd_model_checkpoint":
                if value not in self.models:
                    raise HTTPException(status_code=500, detail=f"model {value!r} not found")
                with call_queue.queue_lock:  # the onchange is wrap_queued_call'd in the WebUI
                    if value != self.checkpoint:
                        self.checkpoint = value
                        shared.sd_model = self.models[value]
                        script_callbacks.model_loaded_callback(shared.sd_model)
                continue
            info = shared.opts.data_labels.get(key)
            old = getattr(shared.opts, key, None)
            setattr(shared.opts, key, value)
            if info is not None and info.onchange is not None and old != value:
                info.onchange()

    # -- generation ---------------------------------------------------------------------------
    def script_args(self, body: dict) -> list:
        args = list(self.defaults)
        for name, entry in (body.get("alwayson_scripts") or {}).items():
            if name.lower() != SCRIPT_TITLE.lower():
                raise _http(422, f"always on script {name} not found")
            given = entry.get("args", []) if isinstance(entry, dict) else []
            for i in range(min(len(args), len(given))):
                args[i] = given[i]
        return args

    def generate(self, body: dict, img2img: bool) -> dict:
        args = self.script_args(body)
        width, height = int(body.get("width", 64)), int(body.get("height", 64))
        batch = int(body.get("batch_size", 1))
        seed = int(body.get("seed", -1))
        seed = seed if seed >= 0 else 1234
        prompt = str(body.get("prompt", ""))
        init = [_decode(b) for b in body.get("init_images") or []] if img2img else None
        mask = _decode(body["mask"]).convert("L") if img2img and body.get("mask") else None
        with call_queue.queue_lock:
            shared.state.begin(job="scripts_img2img" if img2img else "scripts_txt2img")
            try:
                p = ApiProcessing(
                    sd_model=shared.sd_model,
                    cond=_text(prompt, batch, seed),
                    uncond=_text(str(body.get("negative_prompt", "")), batch, seed + 1),
                    repeats=[1] * batch,
                    latent=(height // 8, width // 8),
                    steps=int(body.get("steps", 3)),
                    img2img=img2img,
                    enable_hr=bool(body.get("enable_hr")) and not img2img,
                    hr_latent=(height // 4, width // 4),
                    seed=seed,
                    is_api=True,
                    prompt=prompt,
                    all_prompts=[prompt] * batch,
                    width=width,
                    height=height,
                    init_images=init,
                    image_mask=mask,
                    inpaint_full_res=bool(body.get("inpaint_full_res")),
                )
                if p.inpaint_full_res and mask is not None:
                    p.paste_to = _crop_region(mask, width, height)
                torch.manual_seed(seed)  # the WebUI seeds per generation
                errors: list[str] = []
                run_job(self.script, args, p, errors)
                for text in errors:  # ScriptRunner reports script errors on the console
                    print(f"*** Error running a script hook\n{text}", file=sys.stderr, flush=True)
            finally:
                shared.state.end()
        processed = p.processed
        return {
            "images": [_encode(image) for image in processed.images],
            "info": json.dumps({"infotexts": processed.infotexts, "seed": seed}),
            "parameters": {},
        }


def _http(status: int, detail: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=detail)


def _text(prompt: str, batch: int, seed: int) -> torch.Tensor:
    """A stand-in text encoder: the same prompt gives the same conditioning."""
    from tests.a1111_env import CTX

    digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(digest)
    return torch.randn(1, 77, CTX, generator=g).expand(batch, -1, -1).contiguous()


def _decode(text: str) -> Image.Image:
    data = text.split(",", 1)[1] if text.startswith("data:") else text
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _encode(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _crop_region(mask: Image.Image, width: int, height: int, pad: int = 4) -> tuple[int, int, int, int]:
    """``masking.get_crop_region`` + ``expand_crop_region``, reduced: the white area's box, padded
    (x, y, w, h as ``p.paste_to``)."""
    box = mask.getbbox() or (0, 0, mask.width, mask.height)
    x1, y1 = max(box[0] - pad, 0), max(box[1] - pad, 0)
    x2, y2 = min(box[2] + pad, mask.width), min(box[3] + pad, mask.height)
    return x1, y1, x2 - x1, y2 - y1


def build_app(server: Server) -> Any:
    from fastapi import Body, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    def handle_exception(request: Request, e: Exception) -> JSONResponse:
        err = {"error": type(e).__name__, "detail": vars(e).get("detail", ""), "errors": str(e)}
        if not isinstance(e, HTTPException):  # the WebUI prints no traceback for HTTPExceptions
            print(f"API error: {request.method}: {request.url} {err}", file=sys.stderr)
            traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
            sys.stderr.flush()
        return JSONResponse(status_code=vars(e).get("status_code", 500), content=err)

    @app.middleware("http")
    async def exception_handling(request: Request, call_next: Any) -> Any:
        try:
            return await call_next(request)
        except Exception as e:
            return handle_exception(request, e)

    app.add_exception_handler(Exception, handle_exception)
    app.add_exception_handler(HTTPException, handle_exception)

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: dict = Body(...)) -> dict:  # noqa: B008 (fastapi's idiom)
        return server.generate(body, img2img=False)

    @app.post("/sdapi/v1/img2img")
    def img2img(body: dict = Body(...)) -> dict:  # noqa: B008
        if not body.get("init_images"):
            raise HTTPException(status_code=404, detail="Init image not found")
        return server.generate(body, img2img=True)

    @app.post("/sdapi/v1/interrupt")
    def interrupt() -> dict:
        shared.state.interrupt()
        return {}

    @app.get("/sdapi/v1/progress")
    def progress() -> dict:
        return {"progress": 0.0, "state": shared.state.dict()}

    @app.get("/sdapi/v1/options")
    def get_options() -> dict:
        return server.options()

    @app.post("/sdapi/v1/options")
    def set_options(body: dict = Body(...)) -> Any:  # noqa: B008
        server.set_options(body)
        return None

    @app.get("/sdapi/v1/sd-models")
    def sd_models() -> list:
        return [{"title": name, "model_name": Path(name).stem, "filename": name} for name in CHECKPOINTS]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints() -> None:
        with call_queue.queue_lock:
            return None

    for _name, callback in script_callbacks.callbacks["app_started"]:
        callback(SimpleNamespace(), app)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True, help="where the model folder is written")
    parser.add_argument("--fault", default="", help="a planted fault of tests/soak_faults.py (tests only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    write_models(args.folder)
    server = Server(args.folder)
    if args.fault:
        from tests.soak_faults import plant

        plant(args.fault)
    app = build_app(server)
    import uvicorn

    print(f"double A1111 API on 127.0.0.1:{args.port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
