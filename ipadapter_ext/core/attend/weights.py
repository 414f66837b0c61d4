"""Weight types: how one unit's weight is spread over the UNet's cross-attention transformers.

Presets are written per SpatialTransformer in execution order (``t_idx``: 16 for SD1.x, 11 for
SDXL), the granularity of ComfyUI_IPAdapter_plus, sd-webui-controlnet and InstantStyle, so
results carry over between tools. SDXL transformers hold several layers (depth 2 or 10); every
layer of a transformer gets its weight. The table is resolved once per generation into one
number per layer, so the per-call attention path only reads a list.

Two kinds of preset exist:

* shape presets scale ``weight`` by a factor per transformer (ease curves, weak/strong blocks);
* style/composition presets (InstantStyle) select transformers: layers not listed add nothing.
  "Precise" presets also *swap* the reference into the uncond branch on their "negative" layers
  (the layout layers for precise style transfer, every other layer for composition precise), so
  CFG steers away from what those layers carry. How strongly is the type's *boost*
  (``style_boost``, ``composition_boost``), with ComfyUI_IPAdapter_plus's defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ..errors import IPAdapterError


class WeightType(str, Enum):
    LINEAR = "linear"
    EASE_IN = "ease in"
    EASE_OUT = "ease out"
    EASE_IN_OUT = "ease in-out"
    REVERSE_IN_OUT = "reverse in-out"
    WEAK_INPUT = "weak input"
    WEAK_MIDDLE = "weak middle"
    WEAK_OUTPUT = "weak output"
    STRONG_MIDDLE = "strong middle"
    STYLE = "style transfer"
    COMPOSITION = "composition"
    STRONG_STYLE = "strong style transfer"
    STYLE_AND_COMPOSITION = "style and composition"
    STRONG_STYLE_AND_COMPOSITION = "strong style and composition"
    PRECISE_STYLE = "precise style transfer"
    COMPOSITION_PRECISE = "composition precise"


#: Weight types whose composition layers use ``composition_weight`` instead of ``weight``.
USES_COMPOSITION_WEIGHT = frozenset({WeightType.STYLE_AND_COMPOSITION, WeightType.STRONG_STYLE_AND_COMPOSITION})
#: The precise types and the unit field that sets the weight of their negative (swapped) layers.
BOOST_FIELDS = {WeightType.PRECISE_STYLE: "style_boost", WeightType.COMPOSITION_PRECISE: "composition_boost"}
#: ComfyUI_IPAdapter_plus's defaults (its Precise Style Transfer and Precise Composition nodes).
STYLE_BOOST_DEFAULT, COMPOSITION_BOOST_DEFAULT = 1.0, 0.0
BOOST_RANGE = (-5.0, 5.0)
#: composition precise: the share of the boost on the negative layers that carry neither style nor layout.
_MINOR_NEGATIVE = 0.1


@dataclass(frozen=True)
class _Family:
    """What the presets need to know about a UNet layout: which transformers carry style,
    which carry layout (composition), and the 0.25 factor SD1.x gives its first layout one."""

    transformers: int
    style: frozenset[int]
    composition: dict[int, float]  # t_idx → factor of the composition weight


_SD15 = _Family(16, frozenset({0, 1, 2, 3, *range(9, 16)}), {4: 0.25, 5: 1.0})
_SDXL = _Family(11, frozenset({6}), {3: 1.0})
_FAMILIES = {f.transformers: f for f in (_SD15, _SDXL)}


def _family(blocks: Sequence[str]) -> _Family | None:
    return _FAMILIES.get(len(blocks))


def composition_transformers(blocks: Sequence[str]) -> frozenset[int]:
    """The layout ("composition") transformers of an SD1.x or SDXL UNet: where a composition image
    acts. Other UNets have none known."""
    family = _family(blocks)
    if family is None:
        raise IPAdapterError(
            f"a composition image needs an SD1.x (16 transformers) or SDXL (11) UNet, whose layout block is known; "
            f"this one has {len(blocks)}."
        )
    return frozenset(family.composition)


@dataclass(frozen=True)
class TransformerWeights:
    """Per transformer (``t_idx``): the weight, and whether cond/uncond references are swapped."""

    weights: tuple[float, ...]
    swapped: frozenset[int] = frozenset()

    def per_layer(self, transformer_index: Sequence[int]) -> tuple[float, ...]:
        return tuple(self.weights[t] for t in transformer_index)

    def swapped_layers(self, transformer_index: Sequence[int]) -> tuple[bool, ...]:
        return tuple(t in self.swapped for t in transformer_index)


def _shape_factor(kind: WeightType, t: int, n: int, block: str) -> float:
    half = n / 2
    if kind is WeightType.EASE_IN:
        return 0.05 + 0.95 * (1 - t / n)
    if kind is WeightType.EASE_OUT:
        return 0.05 + 0.95 * (t / n)
    if kind is WeightType.EASE_IN_OUT:
        return 0.05 + 0.95 * (1 - abs(t - half) / half)
    if kind is WeightType.REVERSE_IN_OUT:
        return 0.05 + 0.95 * (abs(t - half) / half)
    weak = {
        WeightType.WEAK_INPUT: {"input"},
        WeightType.WEAK_MIDDLE: {"middle"},
        WeightType.WEAK_OUTPUT: {"output"},
        WeightType.STRONG_MIDDLE: {"input", "output"},
    }.get(kind, set())
    return 0.2 if block in weak else 1.0


def transformer_weights(
    kind: WeightType | str,
    weight: float,
    blocks: Sequence[str],
    composition_weight: float | None = None,
    layer_weights: Sequence[float] | None = None,
    *,
    style_boost: float = STYLE_BOOST_DEFAULT,
    composition_boost: float = COMPOSITION_BOOST_DEFAULT,
) -> TransformerWeights:
    """The weight of each transformer for a unit.

    ``blocks`` names the block ("input", "middle", "output") of each transformer in execution
    order. ``layer_weights`` (one factor per transformer) replaces the preset's factors; the main
    weight still multiplies them, and a precise type still swaps its layers. The boosts are the
    weights of the precise types' swapped layers.
    """
    kind = WeightType(kind)
    n = len(blocks)
    wc = weight if composition_weight is None else composition_weight
    family = _family(blocks)
    swapped: frozenset[int] = frozenset()
    if kind in (WeightType.LINEAR, *_SHAPES):
        factors = [weight * _shape_factor(kind, t, n, blocks[t]) for t in range(n)]
    else:
        if family is None:
            raise IPAdapterError(
                f"the weight type '{kind.value}' needs an SD1.x (16 transformers) or SDXL (11) UNet; this one "
                f"has {n}. Use a shape weight type such as 'linear', or give layer_weights."
            )
        factors = _selection(kind, family, weight, wc, style_boost, composition_boost)
        if kind is WeightType.PRECISE_STYLE:
            swapped = frozenset(family.composition)
        elif kind is WeightType.COMPOSITION_PRECISE:
            swapped = frozenset(range(n)) - set(family.composition)
    if layer_weights is not None:
        if len(layer_weights) != n:
            raise IPAdapterError(
                f"layer_weights has {len(layer_weights)} numbers; this UNet has {n} cross-attention transformers "
                f"(16 for SD1.x, 11 for SDXL). Give exactly {n}."
            )
        factors = [weight * float(f) for f in layer_weights]
    return TransformerWeights(tuple(factors), swapped)


_SHAPES = (
    WeightType.EASE_IN,
    WeightType.EASE_OUT,
    WeightType.EASE_IN_OUT,
    WeightType.REVERSE_IN_OUT,
    WeightType.WEAK_INPUT,
    WeightType.WEAK_MIDDLE,
    WeightType.WEAK_OUTPUT,
    WeightType.STRONG_MIDDLE,
)


def _selection(kind: WeightType, family: _Family, w: float, wc: float, sb: float, cb: float) -> list[float]:
    """The InstantStyle-type presets: a weight on the chosen transformers, 0 elsewhere."""
    n = family.transformers
    out = [0.0] * n
    if kind is WeightType.COMPOSITION_PRECISE:
        # the layout layers at the weight; every other layer is negative: the style layers at the
        # boost, the rest at a tenth of it (SD1.x's middle and first output blocks; SDXL's others)
        for t in range(n):
            out[t] = cb if t in family.style else _MINOR_NEGATIVE * cb
        for t, f in family.composition.items():
            out[t] = f * w
        return out
    style_layers = {
        WeightType.STYLE: family.style,
        WeightType.STYLE_AND_COMPOSITION: family.style,
        WeightType.PRECISE_STYLE: family.style,
        WeightType.STRONG_STYLE: frozenset(range(n)) - set(family.composition),
        WeightType.STRONG_STYLE_AND_COMPOSITION: frozenset(range(n)),
    }.get(kind, frozenset())
    for t in style_layers:
        out[t] = w
    if kind is WeightType.COMPOSITION:
        for t, f in family.composition.items():
            out[t] = f * w
    elif kind is WeightType.STRONG_STYLE_AND_COMPOSITION:
        for t in family.composition:  # the strong variant drops SD1.x's 0.25
            out[t] = wc
    elif kind is WeightType.STYLE_AND_COMPOSITION:
        for t, f in family.composition.items():
            out[t] = f * wc
    elif kind is WeightType.PRECISE_STYLE:
        for t, f in family.composition.items():
            out[t] = f * sb
    return out


#: One sentence per weight type, shown in the UI under the dropdown (and in the README).
DESCRIPTIONS: dict[WeightType, str] = {
    WeightType.LINEAR: "The same weight on every layer (the original IP-Adapter).",
    WeightType.EASE_IN: "Strongest on the first (coarse, input) layers, fading towards the output layers.",
    WeightType.EASE_OUT: "Weak on the input layers, growing towards the output layers (more detail, less layout).",
    WeightType.EASE_IN_OUT: "Strongest around the middle block, fading towards both ends.",
    WeightType.REVERSE_IN_OUT: "Strongest at both ends, weakest around the middle block.",
    WeightType.WEAK_INPUT: "Input blocks at 0.2×, the rest at full weight.",
    WeightType.WEAK_MIDDLE: "The middle block at 0.2×, the rest at full weight.",
    WeightType.WEAK_OUTPUT: "Output blocks at 0.2×, the rest at full weight.",
    WeightType.STRONG_MIDDLE: "Only the middle block at full weight; input and output blocks at 0.2×.",
    WeightType.STYLE: "Only the style layers (InstantStyle): colours, textures and mood, not the layout.",
    WeightType.COMPOSITION: "Only the layout layers: the reference's composition, not its style.",
    WeightType.STRONG_STYLE: "Every layer except the layout ones: more of the reference, still not its layout.",
    WeightType.STYLE_AND_COMPOSITION: "Style layers at the weight and layout layers at the composition weight, "
    "e.g. one reference's style with another unit's layout.",
    WeightType.STRONG_STYLE_AND_COMPOSITION: "Every layer at the weight, the layout layers at the composition weight.",
    WeightType.PRECISE_STYLE: "Style layers as in style transfer, and the reference moved to the negative side on the "
    "layout layers, so its layout is actively avoided (style boost sets how strongly; SDXL: start at 2).",
    WeightType.COMPOSITION_PRECISE: "Layout layers at the weight, and the reference moved to the negative side on every "
    "other layer, so its style is actively avoided (composition boost sets how strongly; start at 0.3).",
}
