"""Weight types, layer weights, masks, combine and the negative side, through the A1111 script on
the WebUI's ldm UNet (tiny SD1 topology: 16 cross-attention layers), and their UI/API/infotext
parity. The math alone is tested in tests/test_regions.py and tests/test_weights.py."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.host import a1111
from ipadapter_ext.schema import IPAdapterUnit
from tests.a1111_env import PLUS, image, job, no_hooks_left, pasted_values, run_job, unit_args

#: SD1.x: the transformer (execution order) of each layer in checkpoint key order (reference §3.1).
SD15_T_OF_KEY = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 6]
STYLE_T = {0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15}


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _prepare(webui, **fields):
    _, modules, signature = a1111.unet_layout(webui.model)
    req = UnitRequest(number=1, images=[PLUS["image"]], model="tiny-plus", weight=0.8, **fields)
    return a1111.engine().prepare([req], signature, a1111.placement(webui.model, webui.unet)), modules


@torch.no_grad()
def test_all_zero_layer_weights_equal_no_adapter_bit_for_bit(webui):
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    zeros = run_job(webui.script, unit_args({**PLUS, "layer_weights": ", ".join(["0"] * 16)}), job(webui.model))
    assert torch.equal(zeros, baseline)
    style = run_job(webui.script, unit_args({**PLUS, "weight_type": "style transfer"}), job(webui.model))
    linear = run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert not torch.allclose(style, baseline) and not torch.allclose(style, linear)
    assert no_hooks_left(webui.unet)


@pytest.mark.parametrize(
    "kind", ["style transfer", "composition", "weak middle", "precise style transfer", "composition precise"]
)
def test_weight_types_reach_the_right_layers(webui, kind):
    job_, _ = _prepare(webui, weight_type=kind, composition_weight=0.3, style_boost=0.3, composition_boost=0.5)
    (unit,) = job_.units
    table = {
        "style transfer": [0.8 if t in STYLE_T else 0.0 for t in range(16)],
        "composition": [0.8 * {4: 0.25, 5: 1.0}.get(t, 0.0) for t in range(16)],
        "weak middle": [0.8 * (0.2 if t == 6 else 1.0) for t in range(16)],
        "precise style transfer": [
            0.3 * {4: 0.25, 5: 1.0}[t] if t in (4, 5) else 0.8 * (t in STYLE_T) for t in range(16)
        ],
        "composition precise": [
            0.8 * {4: 0.25, 5: 1.0}[t] if t in (4, 5) else 0.5 * (1.0 if t in STYLE_T else 0.1) for t in range(16)
        ],
    }[kind]
    assert unit.layer_weights == pytest.approx([table[t] for t in SD15_T_OF_KEY])
    swapped = [n for n, s in enumerate(unit.kv.swapped) if s]
    layout_keys = [4, 5]  # keys of transformers 4 and 5
    expected = {"precise style transfer": layout_keys, "composition precise": [n for n in range(16) if n not in (4, 5)]}
    assert swapped == expected.get(kind, [])


class _TermProbe:
    """Records, at every cross-attention layer, ``to_out``'s input before and after our hook."""

    def __init__(self, modules) -> None:
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}
        self.handles = []
        for n, m in enumerate(modules):
            out = m.to_out[0]
            self.handles.append(out.register_forward_pre_hook(lambda _m, a, n=n: self.before.__setitem__(n, a[0])))
            self.handles.append(out.register_forward_hook(lambda _m, a, _o, n=n: self.after.__setitem__(n, a[0])))

    def term(self, n: int) -> torch.Tensor:
        return self.after[n] - self.before[n]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def test_mask_zeroes_the_term_outside_it_on_a_non_square_latent(webui):
    mask = torch.zeros(160, 240)  # 2:3, like the 16×24 latent
    mask[:, 100:] = 1.0
    job_, modules = _prepare(webui, mask=mask)
    probe = _TermProbe(modules)  # registered first: sees to_out's input before our hook
    job_.attach(webui.unet, modules)
    try:
        job_.begin_step(0.5, 1, 2)
        x = torch.randn(2, 4, 16, 24)
        webui.unet(x, torch.tensor([500, 500]), context=torch.randn(2, 77, 48))
    finally:
        job_.detach()
        probe.remove()
    region, grids = RegionMask(mask), set()
    for n in range(16):
        tokens = probe.before[n].shape[1]
        rows, cols = {384: (16, 24), 96: (8, 12), 24: (4, 6), 6: (2, 3)}[tokens]
        grids.add((rows, cols))
        grid = region.grid(rows, cols).reshape(-1)
        term = probe.term(n)
        assert not term[:, grid == 0].any(), n  # exactly zero where the mask is black
        assert term[:, grid > 0].abs().amax() > 0, n
    assert grids == {(16, 24), (8, 12), (4, 6), (2, 3)}  # every layer resolution, middle block included
    assert no_hooks_left(webui.unet)


def _unet_rows(webui, layout, **fields) -> torch.Tensor:
    job_, modules = _prepare(webui, **fields)
    job_.attach(webui.unet, modules)
    try:
        torch.manual_seed(5)
        x, ctx = torch.randn(1, 4, 8, 8).repeat(len(layout), 1, 1, 1), torch.randn(1, 77, 48).repeat(len(layout), 1, 1)
        order = sorted(range(len(layout)), key=lambda i: not layout[i])  # cond rows first, as begin_step expects
        job_.begin_step(0.5, sum(layout), len(layout))
        out = webui.unet(x[order], torch.tensor([500] * len(layout)), context=ctx[order])
        return out[torch.argsort(torch.tensor(order))]
    finally:
        job_.detach()


@torch.no_grad()
@pytest.mark.parametrize("negative", [{"negative_images": [image(9)]}, {"noise": 0.5},
                                      {"negative_images": [image(9)], "noise": 0.3}])  # fmt: skip
def test_negative_image_and_noise_change_only_the_uncond_rows(webui, negative):
    layout = (True, True, False)
    plain = _unet_rows(webui, layout)
    changed = _unet_rows(webui, layout, **negative)
    # Exact: same batch, same layout; the cond rows' inputs and K/V rows are the same on both sides.
    assert torch.equal(changed[:2], plain[:2])  # cond rows: bit for bit
    assert not torch.allclose(changed[2], plain[2])


@torch.no_grad()
def test_average_of_one_image_twice_is_that_image(webui):
    once = _prepare(webui)[0].units[0].kv.kv
    req_images = [PLUS["image"], PLUS["image"]]
    _, _, signature = a1111.unet_layout(webui.model)
    req = UnitRequest(number=1, images=req_images, model="tiny-plus", weight=0.8, combine="average")
    averaged = a1111.engine().prepare([req], signature, a1111.placement(webui.model, webui.unet)).units[0].kv.kv
    # Exact: the mean of two identical tensors is that tensor ((x + x) / 2 rounds to x), and the
    # projection and K/V then run on the same shapes.
    for (k1, v1), (k2, v2) in zip(once, averaged, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    req.combine = "subtract"
    subtracted = a1111.engine().prepare([req], signature, a1111.placement(webui.model, webui.unet)).units[0]
    assert subtracted.kv.num_tokens == 4 and not torch.equal(subtracted.kv.kv[0][0][1], once[0][0][1])


def _every_field(webui) -> tuple[dict, list]:
    """One unit with every field away from its default, as the API sends it and as the UI holds it."""
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    layer_weights = [1, 0.5, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, -0.5, 2]
    api = {"image": [_b64(image(1)), _b64(image(2))], "model": "tiny-plus", "encoder": "tiny-clip", "weight": 0.7,
           "start": 0.1, "end": 0.9, "crop": "pad", "weight_type": "style and composition", "composition_weight": 0.4,
           "weight_mode": "K+V w/ C penalty", "layer_weights": layer_weights, "combine": "norm average",
           "image_weights": [1.0, 0.5], "negative_image": _b64(image(3)), "noise": 0.25,
           "mask": _b64(Image.fromarray(mask))}  # fmt: skip
    sketch = {"image": Image.fromarray(mask).convert("RGB"), "mask": Image.new("RGB", (64, 64))}
    ui = {**{k: v for k, v in api.items() if k not in ("image", "negative_image", "mask")}, "image": image(1),
          "more": [image(2)], "layer_weights": ", ".join(f"{w:g}" for w in layer_weights), "image_weights": "1, 0.5",
          "negative_image": image(3), "mask": sketch}  # fmt: skip
    return api, unit_args(ui)


def _same_request(a: UnitRequest, b: UnitRequest, images: bool = True) -> None:
    for name in ("model", "encoder", "weight", "start", "end", "crop", "mode", "weight_type", "composition_weight",
                 "layer_weights", "combine", "image_weights", "noise"):  # fmt: skip
        assert getattr(a, name) == getattr(b, name), name
    assert torch.equal(a.mask, b.mask)
    if images:
        for x, y in zip([*a.images, *a.negative_images], [*b.images, *b.negative_images], strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))


@torch.no_grad()
def test_every_field_is_the_same_from_the_ui_the_api_and_a_pasted_infotext(webui):
    import gradio as gr
    from modules import infotext_utils

    from ipadapter_ext.ui.args import parse_script_args
    from ipadapter_ext.ui.layout import UNIT_FIELDS

    api, ui_args = _every_field(webui)
    ((_, from_api),) = parse_script_args([api])
    ((_, from_ui),) = parse_script_args(ui_args)
    _same_request(from_api.to_request(1), from_ui.to_request(1))
    p_ui, p_api = job(webui.model, latent=(8, 16)), job(webui.model, latent=(8, 16), is_api=True)
    out_ui, out_api = run_job(webui.script, ui_args, p_ui), run_job(webui.script, [api], p_api)
    assert torch.equal(out_ui, out_api)
    assert not torch.allclose(out_ui, run_job(webui.script, unit_args(enabled=False), job(webui.model, latent=(8, 16))))

    with gr.Blocks():
        webui.script.ui(False)
    text = infotext_utils.create_infotext({"Steps": 3, **p_ui.extra_generation_params})
    assert p_ui.extra_generation_params == p_api.extra_generation_params
    params = infotext_utils.parse_generation_parameters(text)
    pasted = pasted_values(webui.script, params, "script_txt2img_ipadapter_unit_1_")
    assert "negative image and the mask again" in pasted["info"]
    restored = {name: pasted[name] for name in UNIT_FIELDS if name in pasted}
    assert set(UNIT_FIELDS) - set(restored) == {
        "image",
        "more_images",
        "negative_image",
        "mask",
        "reference_mask",
        "composition_image",
    }  # images: dropped again
    restored.update(
        image=image(1), more_images=[image(2)], negative_image=image(3), mask=ui_args[UNIT_FIELDS.index("mask") + 1]
    )
    restored.update(reference_mask=None, composition_image=None)
    ((_, from_paste),) = parse_script_args([True, *[restored[name] for name in UNIT_FIELDS]])
    _same_request(from_paste.to_request(1), from_api.to_request(1), images=False)
    assert isinstance(from_paste, IPAdapterUnit)


def test_bad_values_of_the_new_fields_name_the_field(webui):
    from fastapi import HTTPException

    good = {"image": _b64(image(1)), "model": "tiny-plus"}
    cases = [
        ({"weight_type": "stylish"}, "weight_type: value is not a valid enumeration member"),
        ({"layer_weights": [1, 2]}, "layer_weights has 2 numbers; this UNet has 16"),
        ({"layer_weights": "1, x"}, "layer_weights: 'x' is not a number"),
        ({"image_weights": [1, 1]}, "image_weights has 2 numbers for 1 reference image"),
        ({"noise": 2}, "noise: ensure this value is less than or equal to 1"),
        ({"mask": _b64(Image.new("L", (8, 8)))}, "the mask is black everywhere"),
        ({"mask": "nope!"}, "unit 1, mask: the image is not valid base64"),
        ({"combine": "max"}, "combine: value is not a valid enumeration member"),
    ]
    for change, message in cases:
        with pytest.raises(HTTPException) as caught:
            run_job(webui.script, [{**good, **change}], job(webui.model, is_api=True))
        assert caught.value.status_code == 422 and message in caught.value.detail, (change, caught.value.detail)
    assert no_hooks_left(webui.unet)
    assert run_job(webui.script, [good], job(webui.model, is_api=True)) is not None  # the next request works


@torch.no_grad()
def test_masks_follow_the_hires_pass_and_white_equals_no_mask(webui):
    def run(**fields):
        errors: list[str] = []
        p = job(webui.model, latent=(8, 16), enable_hr=True, hr_latent=(16, 24))
        out = run_job(webui.script, unit_args({**PLUS, **fields}), p, errors)
        assert not errors, errors
        assert len(p.samplers) == 2
        return out

    white, half = Image.new("L", (120, 80), 255), Image.new("L", (120, 80), 0)
    half.paste(255, (60, 0, 120, 80))
    unmasked = run()
    assert torch.equal(run(mask=white), unmasked)  # a mask of ones multiplies by exactly 1
    halved = run(mask=half)
    assert not torch.allclose(halved, unmasked)
    assert not torch.allclose(halved, run(weight=0.0))
