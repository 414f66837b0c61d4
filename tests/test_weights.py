"""Weight types: each preset's per-transformer table, and its expansion to layers.

The expected tables are restated as data from ComfyUI_IPAdapter_plus (cubiq, 9d076a3):
``IPAdapterPlus.py`` ``ipadapter_execute`` (the ``weight`` dicts per ``weight_type``, the boost
defaults of its Precise Style Transfer / Precise Composition nodes) and ``CrossAttentionPatch.py``
(the shape formulas, and which ``t_idx`` swap cond into uncond for the precise types), written out
independently of the code under test.
"""

from __future__ import annotations

import pytest

from ipadapter_ext.core.attend.layers import map_ldm_attn2
from ipadapter_ext.core.attend.weights import (
    COMPOSITION_BOOST_DEFAULT,
    DESCRIPTIONS,
    STYLE_BOOST_DEFAULT,
    WeightType,
    composition_transformers,
    transformer_weights,
)
from ipadapter_ext.core.errors import IPAdapterError

SD15_BLOCKS = ("input",) * 6 + ("middle",) + ("output",) * 9
SDXL_BLOCKS = ("input",) * 4 + ("middle",) + ("output",) * 6
W, WC = 0.8, 0.5
#: The reference's node defaults: IPAdapterPreciseStyleTransfer style_boost 1.0,
#: IPAdapterPreciseComposition composition_boost 0.0.
NODE_STYLE_BOOST, NODE_COMPOSITION_BOOST = 1.0, 0.0


def reference_table(kind: str, xl: bool, w: float, wc: float, sb: float | None, cb: float | None) -> dict[int, float]:
    """``ipadapter_execute``'s weight dict (t_idx → weight; absent = no IP output), as it reads."""
    if kind == "style transfer":
        return {6: w} if xl else {t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}
    if kind == "composition":
        return {3: w} if xl else {4: w * 0.25, 5: w}
    if kind == "strong style transfer":
        keep = (0, 1, 2, 4, 5, 6, 7, 8, 9, 10) if xl else (0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
        return {t: w for t in keep}
    if kind == "style and composition":
        if xl:
            return {3: wc, 6: w}
        return {0: w, 1: w, 2: w, 3: w, 4: wc * 0.25, 5: wc, 9: w, 10: w, 11: w, 12: w, 13: w, 14: w, 15: w}
    if kind == "strong style and composition":
        if xl:
            return {0: w, 1: w, 2: w, 3: wc, 4: w, 5: w, 6: w, 7: w, 8: w, 9: w, 10: w}
        return {**{t: w for t in range(16)}, 4: wc, 5: wc}
    if kind == "precise style transfer":
        c = sb if sb is not None else w
        if xl:
            return {3: c, 6: w}
        return {0: w, 1: w, 2: w, 3: w, 4: c * 0.25, 5: c, 9: w, 10: w, 11: w, 12: w, 13: w, 14: w, 15: w}
    if kind == "composition precise":
        c, b = w, (cb if cb is not None else w)
        if xl:
            return {0: b * .1, 1: b * .1, 2: b * .1, 3: c, 4: b * .1, 5: b * .1, 6: b, 7: b * .1, 8: b * .1,
                    9: b * .1, 10: b * .1}  # fmt: skip
        return {0: b, 1: b, 2: b, 3: b, 4: c * 0.25, 5: c, 6: b * .1, 7: b * .1, 8: b * .1, 9: b, 10: b, 11: b,
                12: b, 13: b, 14: b, 15: b}  # fmt: skip
    raise KeyError(kind)


def reference_swaps(kind: str, xl: bool) -> set[int]:
    """``CrossAttentionPatch.ipadapter_attention``: the t_idx where uncond := cond, cond := 0."""
    layout = {3} if xl else {4, 5}
    if kind == "precise style transfer":
        return layout
    if kind == "composition precise":
        return set(range(11 if xl else 16)) - layout
    return set()


def _shape(kind: str, blocks: tuple[str, ...]) -> list[float]:
    """The shape types' factor per t_idx (CrossAttentionPatch.py), L = number of transformers."""
    n, out = len(blocks), []
    for t, block in enumerate(blocks):
        x = {"ease in": 0.05 + 0.95 * (1 - t / n), "ease out": 0.05 + 0.95 * (t / n),
             "ease in-out": 0.05 + 0.95 * (1 - abs(t - n / 2) / (n / 2)),
             "reverse in-out": 0.05 + 0.95 * (abs(t - n / 2) / (n / 2)),
             "weak input": 0.2 if block == "input" else 1, "weak middle": 0.2 if block == "middle" else 1,
             "weak output": 0.2 if block == "output" else 1,
             "strong middle": 0.2 if block in ("input", "output") else 1, "linear": 1}[kind]  # fmt: skip
        out.append(x)
    return out


SHAPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak middle",
          "weak output", "strong middle")  # fmt: skip
SELECTIONS = ("style transfer", "composition", "strong style transfer", "style and composition",
              "strong style and composition")  # fmt: skip
PRECISE = ("precise style transfer", "composition precise")


def _cases():
    for family, blocks in (("sd15", SD15_BLOCKS), ("sdxl", SDXL_BLOCKS)):
        xl = family == "sdxl"
        for kind in SHAPES:
            yield pytest.param(kind, blocks, {}, [W * f for f in _shape(kind, blocks)], set(), id=f"{family}-{kind}")
        for kind in SELECTIONS:
            table = reference_table(kind, xl, W, WC, None, None)
            expected = [table.get(t, 0.0) for t in range(len(blocks))]
            yield pytest.param(kind, blocks, {}, expected, set(), id=f"{family}-{kind}")
        for kind in PRECISE:
            # without boosts: our defaults are the reference nodes' defaults
            table = reference_table(kind, xl, W, WC, NODE_STYLE_BOOST, NODE_COMPOSITION_BOOST)
            expected = [table.get(t, 0.0) for t in range(len(blocks))]
            yield pytest.param(kind, blocks, {}, expected, reference_swaps(kind, xl), id=f"{family}-{kind}")
            # with boosts
            boosts = {"style_boost": 1.7, "composition_boost": 0.35}
            table = reference_table(kind, xl, W, WC, 1.7, 0.35)
            expected = [table.get(t, 0.0) for t in range(len(blocks))]
            yield pytest.param(kind, blocks, boosts, expected, reference_swaps(kind, xl), id=f"{family}-{kind}-boosted")


@pytest.mark.parametrize("kind,blocks,boosts,expected,swapped", list(_cases()))
def test_each_preset_equals_the_reference_table(kind, blocks, boosts, expected, swapped):
    got = transformer_weights(kind, W, blocks, composition_weight=WC, **boosts)
    assert got.weights == pytest.approx(expected, abs=1e-12)
    assert got.swapped == swapped


@pytest.mark.parametrize("kind", PRECISE)
@pytest.mark.parametrize("xl", [False, True])
def test_a_boost_equal_to_the_weight_is_the_reference_advanced_node_without_a_boost(kind, xl):
    """IPAdapter Advanced with a precise weight type and no boost uses the weight as the boost."""
    blocks = SDXL_BLOCKS if xl else SD15_BLOCKS
    table = reference_table(kind, xl, W, WC, None, None)
    got = transformer_weights(kind, W, blocks, composition_weight=WC, style_boost=W, composition_boost=W)
    assert got.weights == pytest.approx([table.get(t, 0.0) for t in range(len(blocks))], abs=1e-12)


def test_the_boost_defaults_are_the_reference_nodes():
    assert (STYLE_BOOST_DEFAULT, COMPOSITION_BOOST_DEFAULT) == (NODE_STYLE_BOOST, NODE_COMPOSITION_BOOST)


def test_every_weight_type_is_covered_and_described():
    covered = {p.values[0] for p in _cases()}
    assert covered == {t.value for t in WeightType}
    assert set(DESCRIPTIONS) == set(WeightType) and all(DESCRIPTIONS.values())


def _sdxl_names() -> list[str]:
    layout = [("input_blocks", 4, 2), ("input_blocks", 5, 2), ("input_blocks", 7, 10), ("input_blocks", 8, 10),
              ("middle_block", None, 10), ("output_blocks", 0, 10), ("output_blocks", 1, 10), ("output_blocks", 2, 10),
              ("output_blocks", 3, 2), ("output_blocks", 4, 2), ("output_blocks", 5, 2)]  # fmt: skip
    names = []
    for block, i, depth in layout:
        prefix = f"model.diffusion_model.{block}" + (f".{i}.1" if i is not None else ".1")
        names += [f"{prefix}.transformer_blocks.{j}.attn2" for j in range(depth)]
    return names


def test_sdxl_style_and_layout_reach_instantstyles_layers():
    """InstantStyle: SDXL style is up_blocks.0.attentions.1 (keys 69–87, n 34–43), layout is
    down_blocks.2.attentions.1 (keys 29–47, n 14–23)."""
    slots = map_ldm_attn2(_sdxl_names())
    assert len(slots) == 70
    t_index = [s.transformer_index for s in slots]
    style = transformer_weights("style transfer", 1.0, SDXL_BLOCKS).per_layer(t_index)
    assert [n for n, w in enumerate(style) if w] == list(range(34, 44))
    composition = transformer_weights("composition", 1.0, SDXL_BLOCKS).per_layer(t_index)
    assert [2 * n + 1 for n, w in enumerate(composition) if w] == list(range(29, 48, 2))
    precise = transformer_weights("precise style transfer", 1.0, SDXL_BLOCKS)
    assert [n for n, s in enumerate(precise.swapped_layers(t_index)) if s] == list(range(14, 24))
    layout = composition_transformers(SDXL_BLOCKS)  # where a composition image acts
    assert [n for n, t in enumerate(t_index) if t in layout] == list(range(14, 24))
    precise_layout = transformer_weights("composition precise", 1.0, SDXL_BLOCKS, composition_boost=0.3)
    assert [n for n, s in enumerate(precise_layout.swapped_layers(t_index)) if not s] == list(range(14, 24))
    assert [n for n, w in enumerate(precise_layout.per_layer(t_index)) if w == 0.3] == list(range(34, 44))
    mid = transformer_weights("weak middle", 1.0, SDXL_BLOCKS).per_layer(t_index)
    assert [n for n, w in enumerate(mid) if w == 0.2] == list(range(60, 70))  # the middle block holds the last keys


def test_layer_weights_replace_the_preset_and_keep_the_swap():
    factors = [0.5, -1.0, 0, 2, 0, 0, 1, 0, 0, 0, 3]
    got = transformer_weights("precise style transfer", 0.5, SDXL_BLOCKS, layer_weights=factors)
    assert got.weights == tuple(0.5 * f for f in factors) and got.swapped == {3}
    assert transformer_weights("linear", -0.5, SDXL_BLOCKS).weights == (-0.5,) * 11  # negative global weight


@pytest.mark.parametrize("count", [10, 12, 16])
def test_layer_weights_of_the_wrong_length_say_how_many(count):
    with pytest.raises(IPAdapterError, match=f"layer_weights has {count} numbers; this UNet has 11 .*Give exactly 11"):
        transformer_weights("linear", 1.0, SDXL_BLOCKS, layer_weights=[1.0] * count)


def test_layer_selecting_types_refuse_an_unknown_unet_layout():
    blocks = ("input",) * 3 + ("middle",) + ("output",) * 3  # e.g. a distilled UNet
    assert transformer_weights("ease in", 1.0, blocks).weights[0] == pytest.approx(1.0)
    with pytest.raises(IPAdapterError, match="'style transfer' needs an SD1.x .* or SDXL .* this one has 7"):
        transformer_weights("style transfer", 1.0, blocks)


def test_the_composition_image_goes_to_the_layout_block():
    assert composition_transformers(SDXL_BLOCKS) == {3} and composition_transformers(SD15_BLOCKS) == {4, 5}
    with pytest.raises(IPAdapterError, match="composition image needs an SD1.x"):
        composition_transformers(("input",) * 3)
