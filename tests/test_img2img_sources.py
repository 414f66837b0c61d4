"""img2img's own inputs as a unit's sources: the init image(s) as the reference
(``image_from_init``) and the inpaint mask as the region (``mask_from_inpaint``, ``mask_invert``),
on the A1111 and Forge doubles."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import common
from ipadapter_ext.host.img2img_inputs import inpaint_region, resolve
from ipadapter_ext.schema import IPAdapterUnit
from ipadapter_ext.ui.infotext import parse_unit_infotext, paste_notice
from tests.a1111_env import PLUS, image, job, no_hooks_left, run_job, unit_args

#: White on the left 60 of 100 columns: the area to inpaint, over the whole 100×50 init image.
LEFT = Image.new("L", (100, 50), 0)
LEFT.paste(255, (0, 0, 60, 50))


def img2img(p, init: list[Image.Image], mask: Image.Image | None = None, **kw):
    p.img2img, p.init_images, p.image_mask = True, init, mask
    for name, value in kw.items():
        setattr(p, name, value)
    return p


def seeded(webui, args, p):
    torch.manual_seed(0)  # the double's img2img noise comes from the global generator
    return run_job(webui.script, args, p)


@pytest.fixture
def warm(webui):
    """The webui after one generation: loading a model draws from the global generator (module
    initialisation), so only runs after the first are comparable bit for bit."""
    run_job(webui.script, unit_args(PLUS), job(webui.model))
    return webui


# -- resolving the sources ----------------------------------------------------------------------
def test_the_inpaint_mask_is_binarised_and_follows_inpaint_not_masked():
    grey = LEFT.point(lambda v: 200 if v else 100)  # 200 > 128 → inpainted, 100 → kept
    p = img2img(job(None), [image(1)], grey)
    region = torch.tensor(list(inpaint_region(p).getdata()), dtype=torch.float32).reshape(50, 100) / 255
    assert region[:, :60].min() == 1 and region[:, 60:].max() == 0
    p.inpainting_mask_invert = 1  # "Inpaint not masked": the area inpainted is the rest
    assert resolve(p, UnitRequest(1, mask_from_inpaint=True)).mask[:, 60:].min() == 1
    rgba = Image.new("RGBA", (100, 50), (255, 0, 0, 0))  # a drawn layer: its alpha is the mask
    rgba.paste((255, 0, 0, 255), (0, 0, 60, 50))
    p = img2img(job(None), [image(1)], rgba)
    mask = resolve(p, UnitRequest(1, mask_from_inpaint=True, mask_invert=True)).mask
    assert mask.shape == (50, 100) and mask[:, :60].max() == 0 and mask[:, 60:].min() == 1


def test_the_init_images_become_the_references_one_per_generated_image():
    one = resolve(img2img(job(None), [image(1)]), UnitRequest(1, image_from_init=True))
    two = resolve(img2img(job(None), [image(1), image(2)]), UnitRequest(1, image_from_init=True))
    assert len(one.images) == 1 and not one.per_image
    assert len(two.images) == 2 and two.per_image
    assert list(two.images[1].getdata()) == list(image(2).getdata())
    a = image(1)
    repeated = resolve(img2img(job(None), [a, a, a]), UnitRequest(1, image_from_init=True))  # the batch tab's way
    assert len(repeated.images) == 1 and not repeated.per_image


def test_txt2img_has_no_init_image():
    fix = "no input image (txt2img). Untick it"
    with pytest.raises(IPAdapterError, match="IP-Adapter unit 3: .* " + re.escape(fix)):
        resolve(job(None), UnitRequest(3, image_from_init=True))


def test_without_inpainting_a_unit_on_the_inpaint_mask_does_nothing(webui, capsys):
    """Nothing is inpainted in txt2img or plain img2img, so such a unit acts nowhere (and can be
    left on for ADetailer's inpaint passes)."""
    assert resolve(job(None), UnitRequest(3, mask_from_inpaint=True)) is None
    assert resolve(img2img(job(None), [image(1)]), UnitRequest(3, mask_from_inpaint=True)) is None
    assert "inpaints nothing, so the unit does nothing here" in capsys.readouterr().out
    plain = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    ours = run_job(webui.script, unit_args({**PLUS, "mask_from_inpaint": True}), job(webui.model))
    assert torch.equal(ours, plain)


def test_an_inverted_inpaint_mask_covering_everything_leaves_nothing():
    p = img2img(job(None), [image(1)], Image.new("L", (100, 50), 255))
    with pytest.raises(IPAdapterError, match="inverted covers nothing"):
        resolve(p, UnitRequest(2, mask_from_inpaint=True, mask_invert=True))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_from_init": True, "embeds": "eA=="}, "image_from_init and embeds both give the reference"),
        ({"image_from_init": True, "image_weights": [1]}, "image_weights cannot apply with image_from_init"),
        ({"mask_from_inpaint": True, "mask": torch.ones(4, 4).numpy()}, "both a mask and mask_from_inpaint"),
        ({"mask_invert": True}, "'invert mask' is on but the unit has no mask"),
    ],
)
def test_contradictory_sources_are_refused(fields, message):
    with pytest.raises(IPAdapterError, match=message):
        IPAdapterUnit(model="m", **fields).to_request(1)


def test_a_drawn_mask_is_inverted_too():
    mask = torch.zeros(8, 8)
    mask[:, :3] = 1
    request = IPAdapterUnit(model="m", image=image(1), mask=mask.numpy(), mask_invert=True).to_request(1)
    assert torch.equal(request.mask, 1 - mask)


# -- through a generation ------------------------------------------------------------------------
@torch.no_grad()
def test_image_from_init_equals_sending_the_init_image_as_the_reference(warm):
    webui = warm
    init = image(3)
    from_init = seeded(
        webui, unit_args({**PLUS, "image": None, "image_from_init": True}), img2img(job(webui.model), [init])
    )
    sent = seeded(webui, unit_args({**PLUS, "image": init}), img2img(job(webui.model), [init]))
    other = seeded(webui, unit_args(PLUS), img2img(job(webui.model), [init]))  # PLUS's own reference
    assert torch.equal(from_init, sent)  # the same computation
    assert not torch.allclose(from_init, other)
    assert no_hooks_left(webui.unet)


@torch.no_grad()
def test_image_from_init_ignores_the_units_own_reference(warm):
    webui = warm
    init = image(3)
    with_own = seeded(webui, unit_args({**PLUS, "image_from_init": True}), img2img(job(webui.model), [init]))
    without = seeded(
        webui, unit_args({**PLUS, "image": None, "image_from_init": True}), img2img(job(webui.model), [init])
    )
    assert torch.equal(with_own, without)


@torch.no_grad()
def test_several_init_images_each_reference_their_own_image(warm):
    webui = warm
    a, b = image(3), image(4)
    unit = {**PLUS, "image": None, "image_from_init": True}
    both = seeded(webui, unit_args(unit), img2img(job(webui.model, repeats=(1, 1)), [a, b]))
    only_a = seeded(webui, unit_args({**PLUS, "image": a}), img2img(job(webui.model, repeats=(1, 1)), [a, b]))
    only_b = seeded(webui, unit_args({**PLUS, "image": b}), img2img(job(webui.model, repeats=(1, 1)), [a, b]))
    # different code paths (a stacked projection), the same math: a tolerance
    torch.testing.assert_close(both[0], only_a[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1], only_b[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], only_b[0], rtol=1e-4, atol=1e-5)
    assert no_hooks_left(webui.unet)


@torch.no_grad()
def test_several_init_images_with_split_cond_and_uncond_calls(warm, monkeypatch):
    from modules import shared

    webui = warm
    """The row → image mapping holds when the host runs cond and uncond in separate UNet calls."""
    a, b = image(3), image(4)
    unit = {**PLUS, "image": None, "image_from_init": True}
    joint = seeded(webui, unit_args(unit), img2img(job(webui.model, repeats=(1, 1)), [a, b]))
    monkeypatch.setattr(shared.opts, "batch_cond_uncond", False)  # one UNet call per cond/uncond chunk
    split = seeded(webui, unit_args(unit), img2img(job(webui.model, repeats=(1, 1)), [a, b]))
    torch.testing.assert_close(joint, split, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_mask_from_inpaint_equals_drawing_the_same_mask(warm):
    webui = warm
    init = Image.new("RGB", (100, 50), (90, 120, 150))
    from_inpaint = seeded(
        webui, unit_args({**PLUS, "mask_from_inpaint": True}), img2img(job(webui.model), [init], LEFT)
    )
    drawn = seeded(webui, unit_args({**PLUS, "mask": LEFT}), img2img(job(webui.model), [init], LEFT))
    inverted = seeded(
        webui,
        unit_args({**PLUS, "mask_from_inpaint": True, "mask_invert": True}),
        img2img(job(webui.model), [init], LEFT),
    )
    assert torch.equal(from_inpaint, drawn)
    assert not torch.allclose(from_inpaint, inverted)


def test_errors_name_the_unit_and_stop_the_generation(webui):
    errors: list[str] = []
    p = job(webui.model)  # txt2img
    with pytest.raises(IPAdapterError, match="IP-Adapter unit 1: 'use the img2img input as the reference'"):
        run_job(webui.script, unit_args({**PLUS, "image": None, "image_from_init": True}), p, errors)
    assert no_hooks_left(webui.unet)


def test_the_infotext_says_where_the_reference_and_mask_come_from(webui):
    p = img2img(job(webui.model), [image(3)], LEFT)
    seeded(webui, unit_args({**PLUS, "image": None, "image_from_init": True, "mask_from_inpaint": True}), p)
    text = p.extra_generation_params["IP-Adapter 1"]
    assert "images: init" in text and "image_from_init: yes" in text and "mask_from_inpaint: yes" in text
    fields = parse_unit_infotext(text)
    assert fields["image_from_init"] is True and fields["mask_from_inpaint"] is True
    assert "mask_invert" not in fields and "img2img input" in paste_notice(fields)


def test_a_unit_ticked_to_use_the_init_image_is_not_untouched():
    from ipadapter_ext.ui.args import parse_script_args

    units = parse_script_args(unit_args({"image": None, "image_from_init": True}))
    assert [n for n, _ in units] == [1]  # ticked, no model: an error that names what is missing
    with pytest.raises(IPAdapterError, match="no model selected"):
        common.engine().tokens(units[0][1].to_request(1), None)  # type: ignore[arg-type]


@torch.no_grad()
def test_a_batch_folder_interrupted_midway_leaves_no_hooks_and_the_next_image_is_unaffected(warm):
    """The Batch tab runs one generation per file (``p.init_images`` replaced each time) with the
    same script arguments; an interrupt inside the second file's sampling must leave nothing
    behind for the third."""
    webui = warm
    unit = unit_args({**PLUS, "image": None, "image_from_init": True})
    calls = {"n": 0}

    def interrupt(*_a, **_k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("interrupted")

    outputs = []
    for number, init in enumerate((image(3), image(4), image(5))):
        p = img2img(job(webui.model), [init])
        handle = webui.unet.register_forward_pre_hook(interrupt) if number == 1 else None
        try:
            outputs.append(seeded(webui, unit, p))
        except RuntimeError:
            outputs.append(None)
        finally:
            if handle is not None:
                handle.remove()
        assert no_hooks_left(webui.unet)
        assert "image_from_init: yes" in p.extra_generation_params["IP-Adapter 1"]
    assert outputs[1] is None
    alone = seeded(webui, unit, img2img(job(webui.model), [image(5)]))
    assert torch.equal(outputs[2], alone)
