"""Reference craft through the A1111 script on the WebUI's ldm UNet (tiny SD1 topology) and the
engine: tiled references, the reference mask, noise types, one reference per batch image, the
composition image, and the new fields' parity between UI, API, infotext, paste and X/Y/Z."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi import HTTPException
from PIL import Image

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.encode.references import encode_references
from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111
from tests.a1111_env import PLUS, image, job, no_hooks_left, pasted_values, run_job, unit_args


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


WIDE = picture(210, 90, 11)  # 21:9
SQUARE = picture(90, 90, 12)


def prepare(webui, *requests: UnitRequest):
    _, _, signature = a1111.unet_layout(webui.model)
    return a1111.engine().prepare(list(requests), signature, a1111.placement(webui.model, webui.unet))


def tokens(webui, **fields):
    req = UnitRequest(1, fields.pop("images", [PLUS["image"]]), "tiny-plus", **fields)
    return a1111.engine().unit_tokens(req, a1111.placement(webui.model, webui.unet))


def count_encodes(monkeypatch) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    original = ClipVisionEncoder.encode

    def spy(self, pixels):
        seen.append(pixels.clone())
        return original(self, pixels)

    monkeypatch.setattr(ClipVisionEncoder, "encode", spy)
    return seen


# -- tiles ---------------------------------------------------------------------------------------
@torch.no_grad()
def test_a_tiled_reference_gives_one_token_group_per_tile(webui, monkeypatch):
    a1111.engine().embeddings.clear()
    seen = count_encodes(monkeypatch)
    found = tokens(webui, images=[WIDE], crop="tiles")
    tile_calls = [p for p in seen if p.any()]  # (the other is the uncond's blank image, once per encoder)
    assert len(tile_calls) == 3 and all(p.shape[0] == 1 for p in tile_calls)  # one encoder call per tile
    refs = found.references
    assert refs.tiling is not None and refs.tiling.describe() == "3 across"
    assert refs.tokens.groups == 3 and refs.tokens.cond.shape[1] == 3 * 4  # tiny-plus: 4 tokens per image
    tiles = [WIDE.resize((522, 224), Image.BICUBIC).crop((s, 0, s + 224, 224)) for s in (0, 149, 298)]
    for g, tile in enumerate(tiles):  # each group: that tile alone, as a centre-cropped reference
        alone = tokens(webui, images=[tile]).references.tokens
        assert torch.equal(refs.tokens.cond[:, 4 * g : 4 * g + 4], alone.cond)
        assert torch.equal(refs.tokens.uncond[:, 4 * g : 4 * g + 4], alone.uncond)
    seen.clear()
    tokens(webui, images=[WIDE], crop="tiles")
    assert not seen  # cached: no encoder call the second time
    job_ = prepare(webui, UnitRequest(1, [WIDE], "tiny-plus", crop="tiles"))
    (unit,) = job_.units
    assert set(unit.kv.groups) == {3} and unit.bands is not None and "· tiles 3 across" in unit.log_line()


@torch.no_grad()
def test_a_square_reference_with_tiles_is_the_centre_crop(webui):
    tiled = run_job(webui.script, unit_args({**PLUS, "image": SQUARE, "crop": "tiles"}), job(webui.model))
    centre = run_job(webui.script, unit_args({**PLUS, "image": SQUARE, "crop": "center"}), job(webui.model))
    torch.testing.assert_close(tiled, centre, atol=0, rtol=0)  # one tile is the same computation


@torch.no_grad()
def test_a_wide_reference_with_tiles_differs_from_the_centre_and_says_so(webui):
    p = job(webui.model, latent=(8, 16))
    tiled = run_job(webui.script, unit_args({**PLUS, "image": WIDE, "crop": "tiles"}), p)
    centre = run_job(webui.script, unit_args({**PLUS, "image": WIDE}), job(webui.model, latent=(8, 16)))
    assert not torch.allclose(tiled, centre)
    info = p.extra_generation_params["IP-Adapter 1"]
    assert "crop: tiles" in info and "tiles: 3 across" in info
    assert no_hooks_left(webui.unet)


@torch.no_grad()
def test_each_band_gets_its_own_tile(webui):
    """The output's left band sees the left tile: a unit of only the left tile, masked to the left
    third, gives the same term there as the tiled unit (up to the cross-fade)."""
    from tests.test_unit_controls import _TermProbe

    job_ = prepare(webui, UnitRequest(1, [WIDE], "tiny-plus", crop="tiles"))
    left = WIDE.resize((522, 224), Image.BICUBIC).crop((0, 0, 224, 224))
    region = torch.zeros(8, 24)
    region[:, :8] = 1
    alone = prepare(webui, UnitRequest(1, [left], "tiny-plus", mask=region))
    _, modules, _ = a1111.unet_layout(webui.model)
    terms = []
    for j in (job_, alone):
        probe = _TermProbe(modules)
        j.attach(webui.unet, modules)
        try:
            j.begin_step(0.5, 1, 1)
            torch.manual_seed(3)
            webui.unet(torch.randn(1, 4, 8, 24), torch.tensor([500]), context=torch.randn(1, 77, 48))
        finally:
            j.detach()
            probe.remove()
        terms.append(probe.term(0).reshape(8, 24, -1))
    tiled, single = terms
    # columns 0..5 lie in the left tile's band alone (it reaches 224/522 = 43 % of the width)
    torch.testing.assert_close(tiled[:, :6], single[:, :6], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tiled[:, 18:], single[:, 18:])


@torch.no_grad()
def test_tiles_with_a_negative_image_noise_and_the_attention_map(webui):
    p = job(webui.model, latent=(8, 16))
    unit = {**PLUS, "image": WIDE, "crop": "tiles", "negative_image": image(9), "noise": 0.3, "sharpening": 0.5}
    errors: list[str] = []
    run_job(webui.script, [*unit_args(unit), True, False], p, errors)
    assert not errors, errors
    assert len(p.processed.images) == 2  # the image and its attention map
    assert "IP-Adapter attention map: unit 1" in p.processed.infotexts[1]
    noisy = {**PLUS, "image": WIDE, "crop": "tiles", "noise": 0.4, "noise_type": "gaussian"}
    run_job(webui.script, unit_args(noisy), job(webui.model), errors)
    assert not errors, errors


def test_the_encode_route_refuses_what_embeds_cannot_hold(webui):
    req = UnitRequest(1, [WIDE], "tiny-plus", crop="tiles")
    with pytest.raises(IPAdapterError, match="tiled reference .* cannot be packed into embeds"):
        a1111.engine().tokens(req, a1111.placement(webui.model, webui.unet))


# -- reference mask --------------------------------------------------------------------------------
@torch.no_grad()
def test_an_all_white_reference_mask_is_no_mask_bit_for_bit(webui):
    plain = run_job(webui.script, [{"image": _b64(image(1)), "model": "tiny-plus"}], job(webui.model, is_api=True))
    white = {"image": _b64(image(1)), "model": "tiny-plus", "reference_mask": _b64(Image.new("L", (30, 20), 255))}
    assert torch.equal(run_job(webui.script, [white], job(webui.model, is_api=True)), plain)
    half = np.zeros((40, 56), np.uint8)
    half[:, 28:] = 255
    masked = {**white, "reference_mask": _b64(Image.fromarray(half))}
    assert not torch.allclose(run_job(webui.script, [masked], job(webui.model, is_api=True)), plain)


def test_an_all_black_reference_mask_is_a_422(webui):
    black = {"image": _b64(image(1)), "model": "tiny-plus", "reference_mask": _b64(Image.new("L", (8, 8), 0))}
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, [black], job(webui.model, is_api=True))
    assert caught.value.status_code == 422 and "the reference mask is black everywhere" in caught.value.detail
    assert no_hooks_left(webui.unet)


@torch.no_grad()
def test_the_reference_mask_blanks_what_it_excludes_before_encoding(webui, monkeypatch):
    reference = picture(120, 80, 5)
    mask = Image.new("L", (120, 80), 0)
    mask.paste(255, (0, 0, 60, 80))  # keep the left half
    encoder = a1111.engine()._encoder(UnitRequest(1, model="tiny-plus"), a1111.engine()._adapter("tiny-plus"),
                                      a1111.placement(webui.model, webui.unet))[1]  # fmt: skip
    seen = count_encodes(monkeypatch)
    from ipadapter_ext.core.encode.references import ReferenceView

    encode_references(encoder, [reference], view=ReferenceView(mask=mask))
    encode_references(encoder, [reference])
    masked, plain = seen
    # the centre crop of 120×80 → 336×224 keeps columns 56..280 of the resized image: the mask's
    # edge (column 168) falls at column 112 of the square
    assert not masked[..., :, 113:].any()  # blanked: zero in normalised pixels, the CLIP mean colour
    assert torch.equal(masked[..., :, :111], plain[..., :, :111])
    outside = Image.new("L", (120, 80), 0)
    outside.paste(255, (0, 0, 15, 80))  # only columns the centre crop drops
    with pytest.raises(IPAdapterError, match="hides everything the crop keeps"):
        encode_references(encoder, [reference], view=ReferenceView(mask=outside))


# -- noise types -----------------------------------------------------------------------------------
def _uncond(webui, seeds=(7,), **fields):
    return tokens(webui, noise=0.6, seeds=seeds, **fields).references.tokens.uncond


@torch.no_grad()
def test_noise_types_are_deterministic_for_a_seed_and_differ_from_each_other(webui):
    kinds = ["noise", "fade", "dissolve", "gaussian", "shuffle"]
    first = {k: _uncond(webui, noise_type=k) for k in kinds}
    a1111.engine().embeddings.clear()  # computed again, not served from the cache
    again = {k: _uncond(webui, noise_type=k) for k in kinds}
    for k in kinds:
        assert torch.equal(first[k], again[k]), k
    for i, a in enumerate(kinds):
        for b in kinds[i + 1 :]:
            assert not torch.allclose(first[a], first[b]), (a, b)
    other_seed = {k: _uncond(webui, seeds=(8,), noise_type=k) for k in kinds}
    assert torch.equal(other_seed["noise"], first["noise"])  # the original type keeps its fixed seed
    for k in kinds[1:]:
        assert not torch.allclose(other_seed[k], first[k]), k  # the new types follow the generation seed
    blurred = _uncond(webui, noise_type="fade", noise_blur=5)
    assert not torch.allclose(blurred, first["fade"])
    only_blur = tokens(webui, noise_blur=5).references.tokens.uncond
    zeros = tokens(webui).references.tokens.uncond
    assert not torch.allclose(only_blur, zeros)  # blur alone makes the uncond the blurred reference


@torch.no_grad()
def test_each_batch_image_draws_its_uncond_from_its_own_seed(webui):
    both = _uncond(webui, seeds=(10, 11), noise_type="dissolve")
    assert both.shape[0] == 2
    assert torch.equal(both[1:], _uncond(webui, seeds=(11,), noise_type="dissolve"))
    assert torch.equal(both[:1], _uncond(webui, seeds=(10,), noise_type="dissolve"))
    # through the host: batch image 1's result does not depend on image 0's seed
    unit = {**PLUS, "noise": 0.5, "noise_type": "fade"}
    a = run_job(webui.script, unit_args(unit), job(webui.model, repeats=(1, 1), seeds=[20, 21]))
    b = run_job(webui.script, unit_args(unit), job(webui.model, repeats=(1, 1), seeds=[30, 21]))
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[0], b[0])
    info = job(webui.model)
    run_job(webui.script, unit_args(unit), info)
    assert "noise_type: fade" in info.extra_generation_params["IP-Adapter 1"]


# -- one reference per batch image -----------------------------------------------------------------
@torch.no_grad()
def test_per_batch_image_equals_one_reference_per_generation(webui):
    a, b = image(3), image(4)
    per_batch = {**PLUS, "image": a, "more": [], "per_batch_image": True}
    api = [{"image": [_b64(a), _b64(b)], "model": "tiny-plus", "weight": 0.8, "per_batch_image": True}]
    both = run_job(webui.script, api, job(webui.model, repeats=(1, 1), is_api=True))
    only_a = run_job(webui.script, unit_args({**PLUS, "image": a}), job(webui.model, repeats=(1, 1)))
    only_b = run_job(webui.script, unit_args({**PLUS, "image": b}), job(webui.model, repeats=(1, 1)))
    torch.testing.assert_close(both[0], only_a[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1], only_b[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[1], only_a[1], rtol=1e-4, atol=1e-5)
    one = run_job(webui.script, unit_args(per_batch), job(webui.model))  # the UI, batch of 1
    torch.testing.assert_close(one[0], run_job(webui.script, unit_args({**PLUS, "image": a}), job(webui.model))[0])


def test_per_batch_image_names_both_counts_when_they_differ(webui):
    api = [{"image": [_b64(image(3)), _b64(image(4)), _b64(image(5))], "model": "tiny-plus", "per_batch_image": True}]
    with pytest.raises(HTTPException) as caught:
        run_job(webui.script, api, job(webui.model, repeats=(1, 1), is_api=True))
    detail = caught.value.detail
    assert caught.value.status_code == 422 and "3 reference image(s) for a batch size of 2" in detail, detail
    assert no_hooks_left(webui.unet)


# -- composition image -----------------------------------------------------------------------------
@torch.no_grad()
def test_the_composition_image_replaces_the_tokens_on_the_layout_block_only(webui):
    plain = prepare(webui, UnitRequest(1, [image(1)], "tiny-plus")).units[0]
    both = prepare(webui, UnitRequest(1, [image(1)], "tiny-plus", composition_images=[image(2)])).units[0]
    other = prepare(webui, UnitRequest(1, [image(2)], "tiny-plus")).units[0]
    _, _, signature = a1111.unet_layout(webui.model)
    layout_layers = [n for n, t in enumerate(signature.transformer_index) if t in (4, 5)]
    assert both.alt_layers == frozenset(layout_layers) and len(layout_layers) == 2
    for n in range(16):
        k_both, k_plain, k_other = both.kv.kv[n][0], plain.kv.kv[n][0], other.kv.kv[n][0]
        source = k_other if n in layout_layers else k_plain
        torch.testing.assert_close(k_both[1], source[1], rtol=1e-5, atol=1e-6)  # cond row
        torch.testing.assert_close(k_both[0], k_plain[0], rtol=1e-5, atol=1e-6)  # uncond row: the unit's own
    assert "· composition image" in both.log_line()


@torch.no_grad()
def test_the_composition_image_through_the_api_changes_the_image(webui):
    base = {"image": _b64(image(1)), "model": "tiny-plus", "weight_type": "style and composition"}
    plain = run_job(webui.script, [base], job(webui.model, is_api=True))
    p = job(webui.model, is_api=True)
    comp = run_job(webui.script, [{**base, "composition_image": _b64(image(2))}], p)
    assert not torch.allclose(plain, comp)
    assert "composition_image: yes" in p.extra_generation_params["IP-Adapter 1"]


# -- the fields in UI, API, infotext, paste and X/Y/Z ------------------------------------------------
NEW_FIELDS = {"weight_type": "composition precise", "composition_boost": 0.35, "crop": "tiles", "sharpening": 0.25,
              "noise": 0.3, "noise_type": "shuffle", "noise_blur": 3}  # fmt: skip


@torch.no_grad()
def test_the_new_fields_are_the_same_from_the_ui_the_api_and_a_pasted_infotext(webui):
    import gradio as gr
    from modules import infotext_utils

    from ipadapter_ext.ui.args import parse_script_args
    from ipadapter_ext.ui.layout import UNIT_FIELDS

    ref_mask = np.zeros((90, 210), np.uint8)
    ref_mask[:, 40:] = 255
    api = {"image": _b64(WIDE), "model": "tiny-plus", "weight": 0.7, **NEW_FIELDS,
           "reference_mask": _b64(Image.fromarray(ref_mask)), "composition_image": _b64(image(2))}  # fmt: skip
    sketch = {"image": Image.fromarray(ref_mask).convert("RGB"), "mask": Image.new("RGB", (210, 90))}
    ui_args = unit_args({**PLUS, "image": WIDE, "weight": 0.7, **NEW_FIELDS, "reference_mask": sketch,
                         "composition_image": image(2)})  # fmt: skip
    ((_, from_api),) = parse_script_args([api])
    ((_, from_ui),) = parse_script_args(ui_args)
    a, b = from_api.to_request(1), from_ui.to_request(1)
    for name in ("weight_type", "composition_boost", "crop", "sharpening", "noise", "noise_type", "noise_blur"):
        assert getattr(a, name) == getattr(b, name), name
    assert np.array_equal(np.asarray(a.reference_mask), np.asarray(b.reference_mask))
    p_ui, p_api = job(webui.model, latent=(8, 16)), job(webui.model, latent=(8, 16), is_api=True)
    assert torch.equal(run_job(webui.script, ui_args, p_ui), run_job(webui.script, [api], p_api))
    assert p_ui.extra_generation_params == p_api.extra_generation_params
    info = p_ui.extra_generation_params["IP-Adapter 1"]
    for text in ("composition_boost: 0.35", "crop: tiles", "sharpening: 0.25", "noise_type: shuffle",
                 "noise_blur: 3", "reference_mask: yes", "composition_image: yes", "tiles: 3 across"):  # fmt: skip
        assert text in info, (text, info)
    assert "style_boost" not in info  # a boost is written only with its precise type
    with gr.Blocks():
        webui.script.ui(False)
    text = infotext_utils.create_infotext({"Steps": 3, **p_ui.extra_generation_params})
    pasted = pasted_values(webui.script, infotext_utils.parse_generation_parameters(text),
                           "script_txt2img_ipadapter_unit_1_")  # fmt: skip
    for name, value in NEW_FIELDS.items():
        assert pasted[name] == value, name
    assert "reference mask" in pasted["info"] and "composition image" in pasted["info"]
    restored = {name: pasted.get(name) for name in UNIT_FIELDS}
    restored.update(image=WIDE, more_images=None, reference_mask=sketch, composition_image=image(2), mask=None,
                    negative_image=None)  # fmt: skip
    ((_, from_paste),) = parse_script_args([True, *[restored[name] for name in UNIT_FIELDS]])
    for name in NEW_FIELDS:
        assert getattr(from_paste.to_request(1), name) == getattr(a, name), name


def test_an_old_infotext_of_precise_style_restores_its_boost():
    from ipadapter_ext.ui.infotext import parse_unit_infotext, paste_value

    old = parse_unit_infotext("model: m, weight: 1, weight_type: precise style transfer, composition_weight: 2.5")
    assert paste_value(old, "style_boost") == 2.5
    assert paste_value(parse_unit_infotext("model: m, weight_type: linear"), "style_boost") == 1.0
    from ipadapter_ext.schema import IPAdapterUnit

    api_old = IPAdapterUnit(model="m", image=None, weight_type="precise style transfer", composition_weight=2.5)
    assert api_old.to_request(1).style_boost == 2.5  # a request from before style_boost means the same
    both = IPAdapterUnit(model="m", weight_type="precise style transfer", composition_weight=2.5, style_boost=0.5)
    assert both.to_request(1).style_boost == 0.5


def test_the_xyz_axes_cover_the_new_fields():
    from ipadapter_ext.interop.xyz import AXES, apply_overrides, make_confirm
    from ipadapter_ext.schema import IPAdapterUnit

    axes = {a.field: a for a in AXES}
    assert {"style_boost", "composition_boost", "crop", "sharpening", "noise_type"} <= set(axes)
    assert "tiles" in axes["crop"].choices and "shuffle" in axes["noise_type"].choices
    p = type("P", (), {"ipadapter_overrides": {"composition_boost": 0.3, "crop": "tiles", "noise_type": "fade"}})()
    ((_, unit),) = apply_overrides(p, [(1, IPAdapterUnit(model="m"))])
    assert (unit.composition_boost, unit.crop.value, unit.noise_type.value) == (0.3, "tiles", "fade")
    with pytest.raises(Exception, match="Composition boost"):
        make_confirm(axes["composition_boost"])(None, [9.0])
