"""Attention maps: where each unit acts, from the term the attention hook already computed.

Math and rendering on tensors alone; one check through the WebUI's ldm UNet that recording
leaves the output bit for bit unchanged.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ldm.modules.attention import BasicTransformerBlock
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from PIL import Image

from ipadapter_ext.core.attend.attention import SCALERS, ImageKV, WeightMode, add_image_attention
from ipadapter_ext.core.attend.attention_map import (
    ALPHA_COLD,
    ALPHA_HOT,
    MAX_SIDE,
    UnitMap,
    accumulator_grid,
    colormap,
    normalise,
    render,
    shared_scale,
)
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.job import PreparedUnit, layer_terms

HEADS, INNER, T = 2, 16, 5
HW = (16, 24)  # a non-square latent: levels 16×24, 8×12, 4×6, 2×3; accumulator 8×12


def _grid(hw: tuple[int, int], level: int) -> tuple[int, int]:
    return math.ceil(hw[0] / 2**level), math.ceil(hw[1] / 2**level)


def _inputs(rows: int, tokens: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q, z = torch.randn(rows, tokens, INNER, generator=g), torch.randn(rows, tokens, INNER, generator=g)
    return q, z, torch.randn(1, T, INNER, generator=g), torch.randn(1, T, INNER, generator=g)


def _record(unit_map: UnitMap, level: int, images, region=None, weight=0.8, seed=0, hw=HW, kv=None) -> torch.Tensor:
    """One layer call at ``level`` with ``len(images)`` rows, recorded into ``unit_map``."""
    n = math.prod(_grid(hw, level))
    q, z, k, v = _inputs(len(images), n, seed)
    k, v = kv or (k, v)
    mask = None if region is None else region.for_layer(n, hw, q.device, q.dtype)
    record = functools.partial(unit_map.add, images=images, latent_hw=hw)
    return add_image_attention(z, q, HEADS, [ImageKV(k, v, weight, mask=mask, record=record)])


def _half(hw: tuple[int, int], left: bool = True) -> RegionMask:
    mask = torch.zeros(hw[0] * 8, hw[1] * 8)  # drawn at image resolution, like a user's mask
    mask[:, : hw[1] * 4] = 1.0
    return RegionMask(mask if left else 1 - mask)


@pytest.mark.parametrize(
    ("latent", "grid"),
    [((64, 64), (32, 32)), ((128, 128), (64, 64)), ((16, 24), (8, 12)), ((13, 7), (7, 4)),
     ((256, 128), (64, 32)), ((300, 100), (64, 21)), ((1, 1), (1, 1))],
)  # fmt: skip
def test_accumulator_grid_is_the_latent_halved_capped_with_its_aspect(latent, grid):
    assert accumulator_grid(latent) == grid
    assert max(grid) <= MAX_SIDE


def test_a_masked_unit_is_exactly_zero_where_it_does_not_act_at_every_level():
    region = _half(HW)  # left half of a 16×24 latent
    summed = UnitMap()
    for level in range(4):
        one = UnitMap()
        for unit_map in (one, summed):
            _record(unit_map, level, [0], region, seed=level)
        got = one.maps()[0]
        assert got.shape == (8, 12)
        # The cells that overlap a token of this layer where the resampled mask is not 0.
        touched = F.interpolate((region.grid(*_grid(HW, level)) > 0).float()[None, None], size=(8, 12), mode="area")
        touched = touched[0, 0] > 0
        assert torch.equal(got[~touched], torch.zeros_like(got[~touched])), level
        assert (got[touched] > 0).all(), level
        if level < 3:  # 24, 12 and 6 columns split in half: the right half is exactly 0
            assert not got[:, 6:].any(), level
        else:  # 2×3: the middle token straddles the border (mask 0.5 there), so does its influence
            assert got[:, 6:8].all() and not got[:, 8:].any()
    assert not summed.maps()[0][:, 8:].any() and (summed.maps()[0][:, :6] > 0).all()


def test_a_map_on_a_latent_whose_levels_all_split_in_half_is_zero_on_the_other_half():
    hw = (16, 32)
    unit_map = UnitMap()
    for step in range(2):
        for level in range(4):
            _record(unit_map, level, [0, None], _half(hw), seed=10 * step + level, hw=hw)
    got = unit_map.maps()[0]
    assert got.shape == (8, 16) and not got[:, 8:].any() and (got[:, :8] > 0).all()


def test_the_map_is_the_norm_of_the_weighted_term_per_token():
    hw, weight = (8, 12), 0.7
    q, z, k, v = _inputs(3, 4 * 6, seed=3)  # level 1: the accumulator's own grid, no resampling
    unit_map = UnitMap()
    record = functools.partial(unit_map.add, images=[0, 1, None], latent_hw=hw)
    add_image_attention(z, q, HEADS, [ImageKV(k, v, weight, record=record)])

    def split(t):
        return t.expand(3, -1, -1).reshape(3, -1, HEADS, INNER // HEADS).transpose(1, 2)

    reference = weight * F.scaled_dot_product_attention(split(q), split(k), split(v))
    norms = reference.transpose(1, 2).reshape(3, -1, INNER).norm(dim=-1)  # over heads × head_dim
    maps = unit_map.maps()
    assert sorted(maps) == [0, 1]
    # Different code paths (V scaled before attention; a fused norm), so equal to rounding.
    torch.testing.assert_close(maps[0], norms[0].view(4, 6), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[1], norms[1].view(4, 6), rtol=1e-5, atol=1e-6)

    finer = UnitMap()  # level 0 (8×12) is averaged 2×2 into the 4×6 accumulator
    q, z, k, v = _inputs(1, 8 * 12, seed=4)
    add_image_attention(
        z, q, HEADS, [ImageKV(k, v, weight, record=functools.partial(finer.add, images=[0], latent_hw=hw))]
    )
    reference = (weight * F.scaled_dot_product_attention(split(q)[:1], split(k)[:1], split(v)[:1])).transpose(1, 2)
    per_token = reference.reshape(8, 12, INNER).norm(dim=-1)
    torch.testing.assert_close(finer.maps()[0], per_token.view(4, 2, 6, 2).mean(dim=(1, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upcast", [False, True])
@pytest.mark.parametrize("mode", list(WeightMode))
def test_recording_leaves_the_attention_output_bit_identical(mode, upcast):
    q, z, k, v = _inputs(4, 8 * 12, seed=5)
    k2, v2 = torch.randn(4, 3, INNER), torch.randn(4, 3, INNER)
    mask = _half((8, 12)).for_layer(96, (8, 12), q.device, q.dtype)
    unit_map = UnitMap()

    def terms(record):
        r = None if record is None else functools.partial(record, images=[0, 1, None, None], latent_hw=(8, 12))
        return [ImageKV(k, v, 0.9, SCALERS[mode], mask, r), ImageKV(k2, v2, -0.4, SCALERS[mode], record=r)]

    plain = add_image_attention(z, q, HEADS, terms(None), upcast)
    recorded = add_image_attention(z, q, HEADS, terms(unit_map.add), upcast)
    assert torch.equal(recorded, plain)
    assert unit_map.maps()[0].any() and unit_map.maps()[1].any()


def test_uncond_rows_count_for_nothing_and_cond_rows_of_one_image_add_up():
    g = torch.Generator().manual_seed(6)
    out = torch.randn(4, HEADS, 4 * 6, INNER // HEADS, generator=g)
    hw = (8, 12)

    def maps(images, rows=slice(None)):
        unit_map = UnitMap()
        unit_map.add(out[rows], images, hw)
        return unit_map.maps()

    both = maps([0, None, 0, 1])  # rows 0 and 2 are two cond prompts (AND) of image 0
    torch.testing.assert_close(both[0], maps([0], slice(0, 1))[0] + maps([0], slice(2, 3))[0])
    torch.testing.assert_close(both[1], maps([1], slice(3, 4))[1])
    uncond_changed = out.clone()
    uncond_changed[1] = 100.0
    unit_map = UnitMap()
    unit_map.add(uncond_changed, [0, None, 0, 1], hw)
    assert torch.equal(unit_map.maps()[0], both[0])
    assert maps([None, None, None, None]) == {}
    torch.testing.assert_close(maps([0, 0, None, None])[0], maps([0], slice(0, 1))[0] + maps([0], slice(1, 2))[0])
    assert maps([0, 1]) == {}  # a row count that does not match the call is skipped, not an error


def test_the_accumulator_does_not_grow_with_layers_and_steps():
    unit_map = UnitMap(HW)
    _record(unit_map, 0, [0, 1, None, None])
    held = unit_map.nbytes
    assert held == 2 * 8 * 12 * 4
    for step in range(25):
        for level in (0, 1, 2, 3, 3, 2, 1, 0):
            _record(unit_map, level, [0, 1, None, None], seed=step)
    assert unit_map.nbytes == held
    assert {i: m.shape for i, m in unit_map.maps().items()} == {0: (8, 12), 1: (8, 12)}


class _Adapter:
    """Just IPAdapterModel.layer_kv, for UnitKV: one projection pair per layer width."""

    def __init__(self, widths, seed: int = 0, ctx: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.w = [(torch.randn(w, ctx, generator=g), torch.randn(w, ctx, generator=g)) for w in widths]

    def layer_kv(self, tokens, device, dtype, head_dim=0):
        return [(tokens @ wk.T, tokens @ wv.T) for wk, wv in self.w]


def _unit(weight: float, widths=(INNER,), seed: int = 0, **kw) -> PreparedUnit:
    g = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(1, T, 6, generator=g), torch.randn(1, T, 6, generator=g)
    kv = UnitKV(_Adapter(widths, seed), cond, uncond, "cpu", torch.float32)
    return PreparedUnit(1, None, kv, weight, **kw)  # type: ignore[arg-type]  # no adapter needed


def test_a_term_records_only_with_a_map_and_the_rows_images():
    layout, n = (True, False), 4 * 6
    assert _unit(0.5, attention_map=UnitMap()).term(0, layout, n, HW).record is None  # today's call sites
    assert _unit(0.5).term(0, layout, n, HW, images=[0, None]).record is None  # maps off
    unit = _unit(0.5, attention_map=UnitMap())
    (term,) = layer_terms([unit], 0, layout, n, HW, images=[0, None])
    assert term.record is not None
    q, z, _, _ = _inputs(2, n, seed=7)
    add_image_attention(z, q, HEADS, [term])
    assert list(unit.attention_map.maps()) == [0] and unit.attention_map.grid == (8, 12)
    unit = _unit(0.5, attention_map=UnitMap())
    add_image_attention(z, q, HEADS, layer_terms([unit], 0, layout, n, None, images=[0, None]))
    assert unit.attention_map.maps()[0].any()  # no latent size: a square grid is assumed, as for masks


def test_weight_zero_gives_an_all_zero_map_that_renders_blank():
    unit = _unit(0.0, attention_map=UnitMap(HW))
    q, z, _, _ = _inputs(2, 4 * 6, seed=8)
    terms = layer_terms([unit], 0, (True, False), 4 * 6, HW, images=[0, None])
    assert terms == [] and add_image_attention(z, q, HEADS, terms) is z
    maps = unit.attention_map.maps(images=[0])
    assert torch.equal(maps[0], torch.zeros(8, 12))
    scale = shared_scale(maps.values())
    assert scale == 0.0 and not normalise(maps[0], scale).any()
    image = Image.fromarray(np.full((64, 96, 3), 200, np.uint8))
    shown = render(image, normalise(maps[0], scale), "unit 1 · weight 0")
    assert shown.mode == "RGB" and shown.width == 96 and shown.height > 64
    assert np.asarray(shown)[:64].max() < 200  # the image dimmed, no colour


def test_two_units_peak_in_their_own_regions_on_one_shared_scale():
    left, right = UnitMap(), UnitMap()
    for level in range(3):
        _record(left, level, [0, None], _half(HW), weight=1.0, seed=level)
        _record(right, level, [0, None], _half(HW, left=False), weight=0.3, seed=level)
    a, b = left.maps()[0], right.maps()[0]
    scale = shared_scale([a, b])
    na, nb = normalise(a, scale), normalise(b, scale)
    assert scale == float(a.max()) and na.max() == 1.0 and 0 < nb.max() < 1
    assert not na[:, 6:].any() and not nb[:, :6].any()
    assert na[:, :6].mean() > 0.2 and nb[:, 6:].mean() > 0.05


def test_a_weaker_unit_is_weaker_on_the_shared_scale():
    strong, weak = UnitMap(), UnitMap()
    kv = _inputs(1, 1, seed=9)[2:]  # the same reference for both; V only: the term is linear in w
    for level in range(4):
        _record(strong, level, [0, 1], weight=1.0, seed=level, kv=kv)
        _record(weak, level, [0, 1], weight=0.3, seed=level, kv=kv)
    maps = [*strong.maps().values(), *weak.maps().values()]
    scale = shared_scale(maps)
    assert max(float(normalise(m, scale).max()) for m in maps[:2]) == 1.0
    for s, w in zip(maps[:2], maps[2:], strict=True):
        torch.testing.assert_close(normalise(w, scale), 0.3 * normalise(s, scale), rtol=1e-4, atol=1e-6)
    assert shared_scale([]) == 0.0 and shared_scale([torch.zeros(2, 2)]) == 0.0


def test_render_overlays_a_perceptual_colormap_where_the_unit_acts():
    lut = colormap(torch.linspace(0, 1, 101))
    luminance = lut @ torch.tensor([0.2126, 0.7152, 0.0722])
    assert (luminance[1:] > luminance[:-1]).all()  # dark to bright, monotonic
    assert torch.equal(colormap(torch.tensor([0.0, 1.0])), torch.tensor([[0.0, 0, 4], [252, 255, 164]]))
    g = torch.Generator().manual_seed(10)
    original = (torch.rand(64, 96, 3, generator=g) * 255).round()
    heat = torch.zeros(8, 12)
    heat[:, :4] = 1.0  # the left third at the shared max, the rest untouched
    shown = render(Image.fromarray(original.to(torch.uint8).numpy()), heat, "unit 2 · Plus · 顔 ✓")  # beyond Latin-1
    assert shown.mode == "RGB" and shown.size[0] == 96 and shown.size[1] > 64
    pixels = torch.from_numpy(np.asarray(shown).astype(np.float32))
    hot = original[:, :24] * (1 - ALPHA_HOT) + colormap(torch.tensor(1.0)) * ALPHA_HOT
    cold = original[:, 72:] * (1 - ALPHA_COLD) + colormap(torch.tensor(0.0)) * ALPHA_COLD
    torch.testing.assert_close(pixels[:64, :24], hot, atol=1, rtol=0)  # nearly opaque where hot
    torch.testing.assert_close(pixels[:64, 72:], cold, atol=1, rtol=0)  # the image, a little dimmed
    assert pixels[64:].std() > 10  # the legend: label, colour bar and scale note drawn


@torch.no_grad()
def test_maps_leave_a_unet_bit_identical_and_fill_each_image():
    """Through the WebUI's ldm UNet (tiny SD1 topology): every attn2 hooked, 2 images + uncond."""
    torch.manual_seed(0)
    unet = UNetModel(
        image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
        num_res_blocks=1, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
        transformer_depth=1, context_dim=48, legacy=False,
    ).eval()  # fmt: skip
    for m in unet.modules():  # ldm zero-initialises output layers, which would hide attention changes
        if isinstance(m, torch.nn.Linear | torch.nn.Conv2d):
            m.reset_parameters()
    attn2 = [m.attn2 for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    widths = [a.to_q.out_features for a in attn2]
    layout, images, hw = (True, True, False, False), [0, 1, None, None], (16, 32)
    x, ctx, t = torch.randn(4, 4, *hw), torch.randn(4, 7, 48), torch.tensor([500] * 4)

    def output(unit: PreparedUnit) -> torch.Tensor:
        def provider(layer, q, _ctx):
            return layer_terms([unit], layer, layout, int(q.shape[1]), hw, images=images)

        with Attn2Hooks(attn2, provider):
            return unet(x, timesteps=t, context=ctx)

    plain = output(_unit(0.8, widths, mask=_half(hw)))
    mapped_unit = _unit(0.8, widths, mask=_half(hw), attention_map=UnitMap(hw))
    assert torch.equal(output(mapped_unit), plain)
    assert not torch.equal(plain, unet(x, timesteps=t, context=ctx))  # the unit did act
    maps = mapped_unit.attention_map.maps()
    assert sorted(maps) == [0, 1] and all(m.shape == (8, 16) for m in maps.values())
    assert all(m[:, :8].min() > 0 and not m[:, 8:].any() for m in maps.values())
