"""Weight types: each preset's per-transformer table, and its expansion to layers.

The expected tables are written out from ../shared/reference/ipadapter-models.md §10 (ComfyUI
IPAdapter_plus's presets, InstantStyle's layers), independently of the code under test.
"""

from __future__ import annotations

import pytest

from ipadapter_ext.core.attend.layers import map_ldm_attn2
from ipadapter_ext.core.attend.weights import DESCRIPTIONS, WeightType, transformer_weights
from ipadapter_ext.core.errors import IPAdapterError

SD15_BLOCKS = ("input",) * 6 + ("middle",) + ("output",) * 9
SDXL_BLOCKS = ("input",) * 4 + ("middle",) + ("output",) * 6
W, WC = 0.8, 0.5

_ = 0.0
SD15 = {
    "linear": [1] * 16,
    "weak input": [0.2] * 6 + [1] + [1] * 9,
    "weak middle": [1] * 6 + [0.2] + [1] * 9,
    "weak output": [1] * 6 + [1] + [0.2] * 9,
    "strong middle": [0.2] * 6 + [1] + [0.2] * 9,
    "style transfer": [1, 1, 1, 1, _, _, _, _, _, 1, 1, 1, 1, 1, 1, 1],
    "composition": [_, _, _, _, 0.25, 1, _, _, _, _, _, _, _, _, _, _],
    "strong style transfer": [1, 1, 1, 1, _, _, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
}
SD15_WITH_WC = {  # (factor of w, factor of wc) per transformer
    "style and composition": ([1, 1, 1, 1, _, _, _, _, _, 1, 1, 1, 1, 1, 1, 1], {4: 0.25, 5: 1}),
    "strong style and composition": ([1] * 16, {4: 1, 5: 1}),
    "precise style transfer": ([1, 1, 1, 1, _, _, _, _, _, 1, 1, 1, 1, 1, 1, 1], {4: 0.25, 5: 1}),
}
SDXL = {
    "linear": [1] * 11,
    "weak input": [0.2] * 4 + [1] + [1] * 6,
    "weak middle": [1] * 4 + [0.2] + [1] * 6,
    "weak output": [1] * 4 + [1] + [0.2] * 6,
    "strong middle": [0.2] * 4 + [1] + [0.2] * 6,
    "style transfer": [_, _, _, _, _, _, 1, _, _, _, _],
    "composition": [_, _, _, 1, _, _, _, _, _, _, _],
    "strong style transfer": [1, 1, 1, _, 1, 1, 1, 1, 1, 1, 1],
}
SDXL_WITH_WC = {
    "style and composition": ([_, _, _, _, _, _, 1, _, _, _, _], {3: 1}),
    "strong style and composition": ([1] * 11, {3: 1}),
    "precise style transfer": ([_, _, _, _, _, _, 1, _, _, _, _], {3: 1}),
}


def _ease(kind: str, n: int) -> list[float]:
    """The reference's formulas, t = transformer index, L = number of transformers."""
    out = []
    for t in range(n):
        x = {"ease in": 1 - t / n, "ease out": t / n, "ease in-out": 1 - abs(t - n / 2) / (n / 2),
             "reverse in-out": abs(t - n / 2) / (n / 2)}[kind]  # fmt: skip
        out.append(0.05 + 0.95 * x)
    return out


def _cases():
    for family, blocks, plain, with_wc in (("sd15", SD15_BLOCKS, SD15, SD15_WITH_WC), ("sdxl", SDXL_BLOCKS, SDXL, SDXL_WITH_WC)):  # fmt: skip
        for kind, table in plain.items():
            yield pytest.param(kind, blocks, [W * f for f in table], id=f"{family}-{kind}")
        for kind in ("ease in", "ease out", "ease in-out", "reverse in-out"):
            yield pytest.param(kind, blocks, [W * f for f in _ease(kind, len(blocks))], id=f"{family}-{kind}")
        for kind, (style, comp) in with_wc.items():
            table = [WC * comp[t] if t in comp else W * f for t, f in enumerate(style)]
            yield pytest.param(kind, blocks, table, id=f"{family}-{kind}")


@pytest.mark.parametrize("kind,blocks,expected", list(_cases()))
def test_each_preset_equals_its_table(kind, blocks, expected):
    got = transformer_weights(kind, W, blocks, composition_weight=WC)
    assert got.weights == pytest.approx(expected, abs=1e-12)
    swapped = {16: {4, 5}, 11: {3}}[len(blocks)] if kind == "precise style transfer" else set()
    assert got.swapped == swapped


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
