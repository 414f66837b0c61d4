"""Tiled references: the tile boxes, the band masks, the token groups and their one attention call.

Expected boxes are worked out by hand from the rule (short side → 224 with the processor's
truncation, ceil(ratio) tiles spread evenly from end to end), not by calling the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ipadapter_ext.core.attend.attention import SCALERS, ImageKV, WeightMode, sum_image_terms
from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.encode.tiles import MAX_TILES, BandMasks, band_weights, cut_tiles, plan_tiles

# (width, height) → (resized, axis, tile starts along the long side)
CASES = {
    "1:1": ((512, 512), (224, 224), "", [0]),
    "4:5": ((400, 500), (224, 280), "y", [0, 56]),
    "5:4": ((500, 400), (280, 224), "x", [0, 56]),
    "2:3": ((400, 600), (224, 336), "y", [0, 112]),
    "3:2": ((600, 400), (336, 224), "x", [0, 112]),
    "21:9": ((2100, 900), (522, 224), "x", [0, 149, 298]),
    "9:21": ((900, 2100), (224, 522), "y", [0, 149, 298]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tile_boxes(name):
    (w, h), resized, axis, starts = CASES[name]
    tiling = plan_tiles(w, h, 224)
    assert tiling.resized == resized and tiling.axis == axis and tiling.count == len(starts)
    if axis == "x":
        assert tiling.boxes == tuple((s, 0, s + 224, 224) for s in starts)
    elif axis == "y":
        assert tiling.boxes == tuple((0, s, 224, s + 224) for s in starts)
    else:
        assert tiling.boxes == ((0, 0, 224, 224),)
    long = max(resized)
    assert starts[-1] + 224 == long or axis == ""  # the last tile ends at the far edge: nothing is lost
    assert not tiling.cropped


def test_nearly_square_is_one_tile_and_past_four_to_one_the_middle_is_used():
    assert plan_tiles(1020, 1000).count == 1  # within 5 %: the centre crop
    assert plan_tiles(1100, 1000).count == 2
    wide = plan_tiles(5000, 1000)  # 5:1 → the middle 4:1
    assert wide.count == MAX_TILES and wide.cropped and wide.describe() == "4 across (middle 4:1)"
    assert wide.boxes[0][0] == (1120 - 4 * 224) // 2 and wide.boxes[-1][2] == wide.boxes[0][0] + 4 * 224
    assert [b[0] for b in wide.boxes] == [112 + 224 * i for i in range(4)]


def test_cut_tiles_are_the_boxes_of_the_resized_image():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (900, 2100, 3), dtype=np.uint8))
    tiling = plan_tiles(*image.size)
    tiles = cut_tiles(image, tiling)
    resized = image.resize((522, 224), Image.BICUBIC)
    assert [t.size for t in tiles] == [(224, 224)] * 3
    assert np.array_equal(np.asarray(tiles[1]), np.asarray(resized)[:, 149:373])


@pytest.mark.parametrize("name", ["4:5", "2:3", "21:9", "3:2"])
def test_bands_add_up_to_one_and_cover_their_tile(name):
    (w, h), resized, _, starts = CASES[name]
    tiling = plan_tiles(w, h)
    long = max(resized)
    positions = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    shares = band_weights(tiling.bands(), positions)
    assert shares.shape == (len(starts), 1000)
    torch.testing.assert_close(shares.sum(0), torch.ones(1000, dtype=torch.float64))
    for g, s in enumerate(starts):
        a, b = s / long, (s + 224) / long
        outside = (positions < a) | (positions > b)
        assert not shares[g][outside].any()  # nothing outside its tile's band
        others = [(t / long, (t + 224) / long) for i, t in enumerate(starts) if i != g]
        alone = ~outside & torch.stack([(positions < oa) | (positions > ob) for oa, ob in others]).all(0)
        assert alone.any() and bool((shares[g][alone] == 1).all())  # all of it where no other tile reaches


def test_in_an_overlap_the_bands_cross_fade_linearly():
    tiling = plan_tiles(400, 600)  # 2 tall tiles: [0, 224] and [112, 336] of 336
    positions = torch.tensor([112 / 336 + 1e-9, 168 / 336, 224 / 336 - 1e-9], dtype=torch.float64)
    shares = band_weights(tiling.bands(), positions)
    torch.testing.assert_close(shares[0], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), atol=1e-5, rtol=0)


def test_band_masks_follow_the_axis_and_the_region():
    wide = BandMasks(plan_tiles(2100, 900))
    grid = wide.grid(4, 12)
    assert grid.shape == (3, 4, 12)
    assert torch.equal(grid[:, 0], grid[:, 3])  # a wide reference's bands are columns of the output
    assert bool((grid[0, :, 0] == 1).all()) and bool((grid[2, :, -1] == 1).all())
    tall = BandMasks(plan_tiles(900, 2100)).grid(12, 4)
    assert torch.equal(tall[:, :, 0], tall[:, :, 3])  # a tall one's are rows
    region = torch.zeros(8, 8)
    region[:, :4] = 1
    masked = BandMasks(plan_tiles(2100, 900), RegionMask(region)).grid(4, 12)
    assert not masked[:, :, 6:].any() and torch.equal(masked[:, :, :6], grid[:, :, :6])
    layer = wide.for_layer(48, (8, 24), torch.device("cpu"), torch.float32)  # halved once: 4×12
    assert torch.equal(layer, grid.reshape(3, 48))


@pytest.mark.parametrize("mode", list(WeightMode))
def test_groups_in_one_call_equal_one_unit_per_tile(mode):
    """Σ_g mask_g · Attn(q, K_g, V_g): each group its own softmax, as if each tile were its own unit."""
    g = torch.Generator().manual_seed(1)
    b, heads, n, d, groups, tokens = 2, 4, 24, 8, 3, 5
    qh = torch.randn(b, heads, n, d, generator=g)
    k = torch.randn(b, groups * tokens, heads * d, generator=g)
    v = torch.randn(b, groups * tokens, heads * d, generator=g)
    mask = torch.rand(groups, n, generator=g)
    got = sum_image_terms(qh, [ImageKV(k, v, 0.7, SCALERS[mode], mask, groups=groups)])
    expected = torch.zeros_like(qh)
    for i in range(groups):
        kg, vg = SCALERS[mode](k[:, i * tokens : (i + 1) * tokens], v[:, i * tokens : (i + 1) * tokens], 0.7)
        split = [t.view(b, tokens, heads, d).transpose(1, 2) for t in (kg, vg)]
        expected += F.scaled_dot_product_attention(qh, *split) * mask[i].view(1, 1, n, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_the_groups_cost_one_attention_over_all_their_tokens(monkeypatch):
    """The query is not repeated per group: two products over all 15 tokens with the query's 4 heads
    (scores, then values), no attention call per group."""
    products, attention_calls = [], []
    matmul, sdpa = torch.matmul, F.scaled_dot_product_attention
    monkeypatch.setattr(torch, "matmul", lambda a, b: products.append((a.shape, b.shape)) or matmul(a, b))
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: attention_calls.append(1) or sdpa(*a, **kw))
    qh = torch.randn(2, 4, 24, 8)
    k = v = torch.randn(1, 3 * 5, 32)
    sum_image_terms(qh, [ImageKV(k, v, 1.0, mask=torch.ones(3, 24), groups=3)])
    assert attention_calls == []
    assert products == [
        (torch.Size([2, 4, 24, 8]), torch.Size([2, 4, 8, 15])),
        (torch.Size([2, 4, 24, 15]), torch.Size([2, 4, 15, 8])),
    ]


def test_a_grouped_term_needs_its_band_masks():
    with pytest.raises(ValueError, match="needs a \\[3, 24\\] mask"):
        sum_image_terms(torch.randn(1, 2, 24, 4), [ImageKV(torch.randn(1, 6, 8), torch.randn(1, 6, 8), 1.0, groups=3)])


def test_the_attention_map_draws_the_bands():
    from ipadapter_ext.core.attend.attention_map import band_borders, render

    tiling = plan_tiles(2100, 900)
    borders = band_borders(tiling.axis, tiling.bands())
    assert borders == pytest.approx([(224 + 149) / 2 / 522, (373 + 298) / 2 / 522])
    base = Image.new("RGB", (120, 60), (40, 40, 40))
    heat = torch.full((8, 16), 0.5)
    plain = np.asarray(render(base, heat, "unit 1"))
    banded = np.asarray(render(base, heat, "unit 1 · 3 tiles", (tiling.axis, tiling.bands())))
    column = round(borders[0] * 120)
    assert (banded[:60, column] != plain[:60, column]).any()  # a dashed line where tile 1 hands over
    assert (banded[30:60, 10:20] == plain[30:60, 10:20]).all()  # elsewhere the same map
