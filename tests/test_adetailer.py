"""IP-Adapter units inside ADetailer's inner inpaint passes (part of issue 14), through the doubles
of ADetailer (tests/doubles/adetailer.py, which states the contract) and of the WebUI's script runner
and img2img "Only masked" (tests/doubles/script_runner.py).

The oracle for an inner pass is a plain "Only masked" img2img of the same image, box, seed and
denoising through the same doubles: with our script in ``ad_script_names`` it must be bit-identical
to that inpaint WITH the units, without it to that inpaint WITHOUT them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from modules import shared

from ipadapter_ext.host import common
from ipadapter_ext.host.common import get_state
from tests.a1111_env import CTX, PLUS, REPO, no_hooks_left, unit_args
from tests.doubles.adetailer import ADetailer, NansException, ad_args, box_mask
from tests.doubles.script_runner import ImageProcessing, ScriptRunner, as_script, process_images

BOX = (8, 8, 23, 23)  # what the "detector" finds on the 64×64 image: a mask over pixels 8..23 inclusive
PAD = 4  # → crop (4, 4, 28, 28): 24×24, already square, resized to the 64×64 output
LEFT_OF_BOX = torch.zeros(64, 64)
LEFT_OF_BOX[:, :16] = 1  # pixels x < 16: the left half of the crop
OUTSIDE_BOX = torch.zeros(64, 64)
OUTSIDE_BOX[:, 32:] = 1  # pixels x ≥ 32: right of the crop


def conds(seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 77, CTX, generator=g), torch.randn(1, 77, CTX, generator=g)


def outer(webui, units: list, ad: ADetailer | None, errors: list | None = None, **kw) -> ImageProcessing:
    """A txt2img generation whose runner holds our script (file scripts/ipadapter.py) and ADetailer."""
    ipa = as_script(webui.script, REPO / "scripts" / "ipadapter.py", len(units))
    scripts, args = [ipa], list(units)
    if ad is not None:
        scripts.append(ad)
        args += ad_args(ad_inpaint_only_masked_padding=PAD)
    cond, uncond = conds()
    p = ImageProcessing(
        sd_model=webui.model, cond=cond, uncond=uncond, repeats=[1], scripts=ScriptRunner(scripts, errors),
        script_args=args, seed=3, **kw,
    )  # fmt: skip
    process_images(p)
    return p


def inpaint(webui, init, units: list | None) -> ImageProcessing:
    """The oracle: "Only masked" img2img of ``init`` at the detected box, as a user would run it."""
    cond, uncond = conds()
    runner = (
        None
        if units is None
        else ScriptRunner([as_script(webui.script, REPO / "scripts" / "ipadapter.py", len(units))])
    )
    p = ImageProcessing(
        sd_model=webui.model, cond=cond, uncond=uncond, repeats=[1], scripts=runner, script_args=units or [],
        seed=3, img2img=True, init_images=[init], image_mask=box_mask(init.size, BOX), inpaint_full_res=True,
        inpaint_full_res_padding=PAD, denoising_strength=0.4,
    )  # fmt: skip
    process_images(p)
    return p


def pixels(p: ImageProcessing, index: int = 0) -> np.ndarray:
    return np.asarray(p.processed.images[index])


@pytest.fixture
def script_names(monkeypatch):
    def set_names(names: str) -> None:
        monkeypatch.setattr(shared.opts, "ad_script_names", names, raising=False)

    return set_names


@pytest.mark.parametrize("names", [None, "IP-Adapter", "wildcards,ipadapter_ext"])
@torch.no_grad()
def test_not_in_script_names_the_units_stay_out_of_the_inner_pass(webui, script_names, names):
    if names is not None:  # None: ADetailer's default list; the title or another name do not match
        script_names(names)
    ad = ADetailer([BOX])
    p = outer(webui, unit_args(PLUS), ad)
    assert len(ad.passes) == 1 and ad.passes[0].paste_to == (4, 4, 24, 24)
    assert not hasattr(ad.passes[0], common.STATE_ATTR)  # our hooks never saw the inner p
    plain = inpaint(webui, ad.inputs[0], None)
    assert np.array_equal(pixels(p), pixels(plain))
    assert no_hooks_left(webui.unet) and get_state(p) is None


@pytest.mark.parametrize("names", ["ipadapter", "wildcards, ipadapter"])
@torch.no_grad()
def test_in_script_names_the_units_apply_as_in_an_only_masked_inpaint(webui, script_names, names, monkeypatch):
    script_names(names)
    seen: list = []

    def spy(p, requests, note):
        kept = follow(p, requests, note)
        seen.append((p, kept))
        return kept

    follow = common.follow_inpaint_area
    monkeypatch.setattr(common, "follow_inpaint_area", spy)
    units = unit_args({**PLUS, "mask": LEFT_OF_BOX.numpy()})
    ad = ADetailer([BOX])
    p = outer(webui, units, ad)
    with_units, without = inpaint(webui, ad.inputs[0], units), inpaint(webui, ad.inputs[0], None)
    assert np.array_equal(pixels(p), pixels(with_units))
    assert not np.array_equal(pixels(p), pixels(without))
    inner = [kept for q, kept in seen if q is ad.passes[0]]
    assert len(inner) == 1 and len(inner[0]) == 1
    mask = inner[0][0].mask  # left half of the 24-pixel crop → left half of the 64-pixel output
    assert mask.shape == (64, 64) and mask[:, :31].min() > 0.95 and mask[:, 33:].max() < 0.05  # Lanczos ringing
    assert mask[:, :32].mean() > 0.98 and mask[:, 32:].mean() < 0.02
    assert no_hooks_left(webui.unet) and get_state(p) is None and get_state(ad.passes[0]) is None


@torch.no_grad()
def test_a_unit_outside_the_detected_box_adds_nothing_to_the_inner_pass(webui, script_names, capsys):
    script_names("ipadapter")
    ad = ADetailer([BOX])
    p = outer(webui, unit_args({**PLUS, "mask": OUTSIDE_BOX.numpy()}), ad)
    assert np.array_equal(pixels(p), pixels(inpaint(webui, ad.inputs[0], None)))
    assert "unit 1's mask lies outside the inpainted area" in capsys.readouterr().out


@torch.no_grad()
def test_the_outer_generation_is_not_clobbered_by_the_inner_pass(webui, script_names):
    """Two batch iterations, attention maps on: the outer's second sampling, its infotext and its
    maps are those of the same generation without ADetailer."""
    script_names("ipadapter")
    units = [*unit_args(PLUS), True]  # the accordion's "Show where each unit acts", after the units
    alone = outer(webui, units, None, n_iter=2)
    ad = ADetailer([BOX])
    both = outer(webui, units, ad, n_iter=2)
    assert len(ad.passes) == 2 and len(both.samplers) == 2  # one inner pass per outer image
    for a, b in zip(alone.processed.samples, both.processed.samples, strict=True):
        assert torch.equal(a, b)
    assert len(both.processed.images) == len(alone.processed.images) == 2 + 2  # two images, a map each
    key = "IP-Adapter 1"
    assert both.extra_generation_params[key] == alone.extra_generation_params[key]
    for a, b in zip(alone.processed.infotexts, both.processed.infotexts, strict=True):
        assert b.startswith(a) and "Inpaint area" not in b  # ADetailer adds its own keys after ours
    assert both.processed.infotexts[2].startswith("IP-Adapter attention map: unit 1")
    assert not np.array_equal(pixels(both), pixels(alone))  # ADetailer did change the images
    assert no_hooks_left(webui.unet) and get_state(both) is None


@pytest.mark.parametrize("error", [RuntimeError, NansException])
@torch.no_grad()
def test_an_exception_in_the_inner_pass_leaves_no_hook(webui, script_names, error):
    """ADetailer lets an error out of ``postprocess_image`` (the runner reports it) and skips a box
    on NaNs: either way the inner hooks come off and the outer generation finishes as without it."""
    script_names("ipadapter")
    units = unit_args(PLUS)
    errors: list[str] = []
    ad = ADetailer([BOX], fail_at_step=1, fail_with=error)
    p = outer(webui, units, ad, errors)
    alone = outer(webui, units, None)
    assert len(ad.passes) == 1 and ad.passes[0].closed
    assert get_state(ad.passes[0]).job is not None  # the units were attached when it failed
    assert no_hooks_left(webui.unet) and get_state(p) is None
    assert np.array_equal(pixels(p), pixels(alone))  # the image ADetailer could not fix
    assert (len(errors) == 1 and "sampling failed at step 1" in errors[0]) == (error is RuntimeError)
    assert errors == [] or "postprocess_image" in errors[0]
