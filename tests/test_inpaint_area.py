"""Unit masks under "Inpaint area: Only masked": cropped and resized exactly as the image is
(``p.paste_to`` after ``p.init``; the host's ``resize_image`` mode 2, mirrored in
tests/doubles/modules/images.py), and a unit whose region lies outside the crop adds nothing."""

from __future__ import annotations

import torch
from PIL import Image

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.host.inpaint_area import crop_mask, follow_inpaint_area
from tests.a1111_env import PLUS, job, run_job, unit_args

LEFT = torch.zeros(16, 32)
LEFT[:, :16] = 1  # the left half of the whole image


def inpainting(p, box: tuple[int, int, int, int], image_size=(200, 100)):
    """What A1111's img2img ``init`` leaves on ``p`` for "Only masked" (box: x, y, w, h)."""
    p.img2img, p.inpaint_full_res, p.paste_to = True, True, box
    p.init_images = [Image.new("RGB", image_size)]
    p.width, p.height = 64, 64
    return p


def test_the_crop_takes_the_same_box_as_the_image():
    inside = crop_mask(LEFT, (200, 100), (0, 0, 100, 100), (64, 64))
    outside = crop_mask(LEFT, (200, 100), (100, 0, 200, 100), (64, 64))
    across = crop_mask(LEFT, (200, 100), (50, 0, 150, 100), (64, 64))
    assert inside.shape == (64, 64) and inside.min() > 0.99  # Lanczos, as the image: ±1/255 ringing
    assert outside.max() == 0
    assert across[:, :30].min() > 0.99 and across[:, 34:].max() < 0.01  # the border lands mid-crop


def test_a_wider_crop_is_fitted_and_filled_like_the_image():
    # a 100×50 box into a 64×64 output: scaled to 64×32, centred, bands filled from the edge rows
    top = torch.zeros(16, 32)
    top[:4] = 1  # the top quarter of the image
    got = crop_mask(top, (200, 100), (0, 0, 100, 50), (64, 64))
    assert got[:16].min() > 0.99 and got[-14:].max() < 0.01  # the upper band copies the white first row


def test_units_outside_are_dropped_and_the_others_kept():
    notes: list[str] = []
    p = inpainting(job(None), (100, 0, 100, 100))
    kept = follow_inpaint_area(
        p, [UnitRequest(1, mask=LEFT), UnitRequest(2), UnitRequest(3, mask=1 - LEFT)], notes.append
    )
    assert [r.number for r in kept] == [1 + 1, 3] and kept[0].mask is None and kept[1].mask.min() > 0.99
    assert notes == ["IP-Adapter: unit 1's mask lies outside the inpainted area; it does nothing here."]
    whole = [UnitRequest(1, mask=LEFT)]
    p.inpaint_full_res = False  # "Whole picture": masks stay as they are
    assert follow_inpaint_area(p, whole, notes.append) is whole


def run_seeded(webui, args, box):
    torch.manual_seed(0)  # the double's img2img noise comes from the global generator
    return run_job(webui.script, args, inpainting(job(webui.model), box))


@torch.no_grad()
def test_a_unit_masked_outside_the_crop_is_bit_identical_to_no_unit(webui, capsys):
    masked = unit_args({**PLUS, "mask": LEFT.numpy()})
    plain = run_seeded(webui, unit_args(enabled=False), (100, 0, 100, 100))
    outside = run_seeded(webui, masked, (100, 0, 100, 100))
    inside = run_seeded(webui, masked, (0, 0, 100, 100))
    assert torch.equal(outside, plain)  # no unit applies: the same computation
    assert not torch.allclose(inside, plain)
    assert "lies outside the inpainted area" in capsys.readouterr().out
