"""The "IP-Adapter" accordion: N units, each a tab with its reference images and settings.

Built from :data:`ipadapter_ext.schema.DEFAULTS`, so the UI's defaults are the schema's. The
script receives ``[enabled] + [unit fields] * N`` in the order of ``layout.UNIT_FIELDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..core.attend.attention import WeightMode
from ..core.attend.context import DOWNSAMPLE_RANGE, DownsampleMode, StrengthMode
from ..core.attend.weights import BOOST_RANGE, DESCRIPTIONS, USES_COMPOSITION_WEIGHT, WeightType
from ..core.encode.combine import CombineMode
from ..core.encode.noise import MAX_BLUR, NoiseType
from ..core.encode.preprocess import CropMode
from ..schema import DEFAULTS, LORA_STRENGTH_RANGE, WEIGHT_RANGE
from .layout import NONE, UNIT_FIELDS
from .mask_input import HINT, REFERENCE_MASK_HINT, mask_input


@dataclass
class BuiltUI:
    inputs: list  # the script's arguments, in order
    enabled: Any  # the accordion's checkbox
    units: list[dict[str, Any]]  # per unit: field name → component, plus "info"
    show_maps: Any = None  # "Show where each unit acts": an attention map per unit after the images
    show_faces: Any = None  # "Show the detected faces": FaceID units' faces after the images


@dataclass
class UiHooks:
    """What the UI asks the host, injected so this module needs no WebUI internals."""

    adapter_names: Callable[[], list[str]]
    encoder_names: Callable[[], list[str]]
    describe: Callable[[str, str], str]  # (model, encoder) → info line (description + compatibility)
    refresh: Callable[[], None]
    default_weight: float = DEFAULTS.weight  # the "default weight" setting; the API uses the same
    known_models: Callable[[], list[str]] | None = None  # official files that can be downloaded
    download: Callable[[list[str]], str] | None = None  # names → status text
    attention_map_default: bool = False  # the "show where each unit acts" setting
    is_redux: Callable[[str], bool] = lambda _model: False  # the model is Flux Redux: show its controls


def build(
    accordion_cls: type,
    elem_id: Callable[[str], str],
    units: int,
    hooks: UiHooks,
    tool_button_cls: type = gr.Button,
    is_img2img: bool = True,
) -> BuiltUI:
    """Create the components inside the current gradio context.

    ``accordion_cls`` and ``tool_button_cls`` are the WebUI's ``InputAccordion`` and
    ``ToolButton`` (the small icon button next to dropdowns), passed in by the host. The img2img
    sources (input image as reference, inpaint mask as region) exist in both tabs, so the script's
    arguments have one layout, but are shown only in img2img."""
    built: list[dict[str, Any]] = []
    with accordion_cls(False, label="IP-Adapter", elem_id=elem_id("enabled")) as enabled:
        with gr.Tabs(elem_id=elem_id("units")):
            for i in range(units):
                with gr.Tab(f"Unit {i + 1}", elem_id=elem_id(f"unit_{i + 1}")):
                    built.append(_unit(i, elem_id, hooks, tool_button_cls, enabled, is_img2img))
            if hooks.known_models is not None and hooks.download is not None:
                _downloads(elem_id, hooks)
        show_maps = gr.Checkbox(
            label="Show where each unit acts", value=hooks.attention_map_default, elem_id=elem_id("attention_map")
        )
        show_faces = gr.Checkbox(label="Show the detected faces", value=False, elem_id=elem_id("show_faces"))
    inputs = [enabled] + [unit[name] for unit in built for name in UNIT_FIELDS] + [show_maps, show_faces]
    return BuiltUI(inputs, enabled, built, show_maps, show_faces)


def _downloads(elem_id: Callable[[str], str], hooks: UiHooks) -> None:
    """A tab to fetch official files (sha256-checked) into the model folders, then rescan."""
    with gr.Tab("Download official models", elem_id=elem_id("downloads")):
        names = gr.Dropdown(
            label="Official models", choices=hooks.known_models(), multiselect=True, elem_id=elem_id("download_names")
        )
        start = gr.Button("Download", elem_id=elem_id("download_start"))
        status = gr.Markdown("", elem_id=elem_id("download_status"))
        start.click(hooks.download, inputs=[names], outputs=[status])


def unit_label(number: int, text: str) -> str:
    """A unit control's label: unique per unit, because the WebUI's ui-config.json stores each
    control's saved value under its label. With one "Weight" label for all units, the first unit's
    default would be applied to every unit (Unit 1's "Enable" ticking Units 2 and 3), and a value
    saved as default for one unit would apply to all. ``javascript/ipadapter.js`` keys its hover
    hints on the same labels."""
    if text == "Enable":
        return f"Enable unit {number}"
    first = text.split(" ", 1)[0]
    keep = first[1:] != first[1:].lower()  # a name such as "FaceID" or "LoRA" keeps its capital
    return f"Unit {number} {text if keep else text[0].lower() + text[1:]}"


def _unit(
    i: int, elem_id: Callable[[str], str], hooks: UiHooks, tool_button_cls: type, accordion: Any, is_img2img: bool
) -> dict[str, Any]:
    def eid(name: str) -> str:
        return elem_id(f"unit_{i + 1}_{name}")

    def label(text: str) -> str:
        return unit_label(i + 1, text)

    enabled = gr.Checkbox(label=label("Enable"), value=i == 0, elem_id=eid("enabled"))
    with gr.Row():
        image = gr.Image(label=label("Reference image"), type="pil", elem_id=eid("image"))
        more = gr.File(
            label=label("More reference images (optional)"),
            file_count="multiple",
            file_types=["image"],
            elem_id=eid("more"),
        )
    reference_mask = mask_input(label("Reference mask (optional)"), eid("reference_mask"))
    gr.Markdown(REFERENCE_MASK_HINT, elem_id=eid("reference_mask_hint"))
    with gr.Row():
        per_batch = gr.Checkbox(label=label("One reference per batch image"), value=DEFAULTS.per_batch_image,
                                elem_id=eid("per_batch_image"))  # fmt: skip
        from_init = gr.Checkbox(
            label=label("Use the img2img input as the reference"),
            value=DEFAULTS.image_from_init,
            visible=is_img2img,
            elem_id=eid("image_from_init"),
        )
    with gr.Row():
        model = gr.Dropdown(
            label=label("Model"), choices=[NONE, *hooks.adapter_names()], value=NONE, elem_id=eid("model")
        )
        encoder = gr.Dropdown(
            label=label("Image encoder"), choices=[DEFAULTS.encoder, *hooks.encoder_names()], value=DEFAULTS.encoder,
            elem_id=eid("encoder"),
        )  # fmt: skip
        refresh = tool_button_cls(value="\U0001f504", elem_id=eid("refresh"))
    info = gr.Markdown("", elem_id=eid("info"))
    weight = gr.Slider(label=label("Weight"), minimum=WEIGHT_RANGE[0], maximum=WEIGHT_RANGE[1], step=0.05,
                       value=hooks.default_weight, elem_id=eid("weight"))  # fmt: skip
    with gr.Row():
        start = gr.Slider(
            label=label("Start"), minimum=0, maximum=1, step=0.01, value=DEFAULTS.start, elem_id=eid("start")
        )
        end = gr.Slider(label=label("End"), minimum=0, maximum=1, step=0.01, value=DEFAULTS.end, elem_id=eid("end"))
    with gr.Row():
        crop = gr.Dropdown(
            label=label("Crop"), choices=[m.value for m in CropMode], value=DEFAULTS.crop.value, elem_id=eid("crop")
        )
        weight_type = gr.Dropdown(label=label("Weight type"), choices=[t.value for t in WeightType],
                                  value=DEFAULTS.weight_type.value, elem_id=eid("weight_type"))  # fmt: skip
    composition = gr.Slider(label=label("Composition weight"), minimum=WEIGHT_RANGE[0], maximum=WEIGHT_RANGE[1], step=0.05,
                            value=DEFAULTS.composition_weight, visible=False, elem_id=eid("composition_weight"))  # fmt: skip
    boosts = {
        kind: gr.Slider(label=label(text), minimum=BOOST_RANGE[0], maximum=BOOST_RANGE[1], step=0.05,
                        value=getattr(DEFAULTS, name), visible=False, elem_id=eid(name))
        for kind, name, text in ((WeightType.PRECISE_STYLE, "style_boost", "Style boost"),
                                 (WeightType.COMPOSITION_PRECISE, "composition_boost", "Composition boost"))
    }  # fmt: skip
    type_info = gr.Markdown(DESCRIPTIONS[DEFAULTS.weight_type], elem_id=eid("weight_type_info"))
    redux_row, redux = _redux(eid, label)
    advanced = _advanced(eid, label, is_img2img)

    def on_weight_type(kind: str):
        known = kind in {t.value for t in WeightType}
        chosen = WeightType(kind) if known else None
        return (
            gr.update(visible=chosen in USES_COMPOSITION_WEIGHT),
            *(gr.update(visible=chosen is boosted) for boosted in boosts),
            DESCRIPTIONS[chosen] if chosen is not None else "",
        )

    weight_type.change(on_weight_type, inputs=[weight_type], outputs=[composition, *boosts.values(), type_info])

    def on_refresh(current_model: str, current_encoder: str):
        hooks.refresh()
        models, encoders = [NONE, *hooks.adapter_names()], [DEFAULTS.encoder, *hooks.encoder_names()]
        return (
            gr.update(choices=models, value=current_model if current_model in models else NONE),
            gr.update(choices=encoders, value=current_encoder if current_encoder in encoders else DEFAULTS.encoder),
            hooks.describe(current_model, current_encoder),
        )

    refresh.click(on_refresh, inputs=[model, encoder], outputs=[model, encoder, info])
    # Dropping a reference ticks the unit and the accordion: a set-up unit left unticked would
    # otherwise generate without the image prompt and without a word.
    for upload in (image, more):
        upload.upload(lambda: (True, True), outputs=[enabled, accordion])
    for component in (model, encoder):
        component.change(hooks.describe, inputs=[model, encoder], outputs=[info])
    model.change(lambda name: gr.update(visible=hooks.is_redux(name)), inputs=[model], outputs=[redux_row])
    *advanced, from_inpaint, invert, lora, v2, sharpening, noise_type, noise_blur, composition_image = advanced
    values = [enabled, image, more, model, encoder, weight, start, end, crop, weight_type, composition, *advanced,
              from_init, from_inpaint, invert, lora, v2, *redux, *boosts.values(), sharpening, reference_mask,
              noise_type, noise_blur, composition_image, per_batch]  # fmt: skip
    return {
        **dict(zip(UNIT_FIELDS, values, strict=True)),
        "info": info,
        "weight_type_info": type_info,
        "redux_row": redux_row,
    }


def _redux(eid: Callable[[str], str], label: Callable[[str], str]) -> tuple[Any, list]:
    """Flux Redux's controls, shown when a Redux model is chosen: how the weight (its strength)
    acts, and the downsampling of its token grid."""
    with gr.Row(visible=False, elem_id=eid("redux")) as row:
        mode = gr.Dropdown(label=label("Strength mode (Redux)"), choices=[m.value for m in StrengthMode],
                           value=DEFAULTS.redux_strength_mode.value, elem_id=eid("redux_strength_mode"))  # fmt: skip
        factor = gr.Slider(label=label("Downsampling (Redux)"), minimum=DOWNSAMPLE_RANGE[0], maximum=DOWNSAMPLE_RANGE[1],
                           step=1, value=DEFAULTS.redux_downsample, elem_id=eid("redux_downsample"))  # fmt: skip
        resample = gr.Dropdown(label=label("Downsampling mode (Redux)"), choices=[m.value for m in DownsampleMode],
                               value=DEFAULTS.redux_downsample_mode.value, elem_id=eid("redux_downsample_mode"))  # fmt: skip
    return row, [mode, factor, resample]


def _advanced(eid: Callable[[str], str], label: Callable[[str], str], is_img2img: bool) -> list:
    """Weight mode, per-layer weights, combining several images, the negative side and the mask
    (drawn, or img2img's inpaint mask; inverted or not)."""
    with gr.Accordion("Advanced", open=False, elem_id=eid("advanced")):
        with gr.Row():
            mode = gr.Dropdown(label=label("Weight mode"), choices=[m.value for m in WeightMode],
                               value=DEFAULTS.weight_mode.value, elem_id=eid("weight_mode"))  # fmt: skip
            combine = gr.Dropdown(label=label("Combine images"), choices=[c.value for c in CombineMode],
                                  value=DEFAULTS.combine.value, elem_id=eid("combine"))  # fmt: skip
        layer_weights = gr.Textbox(
            label=label("Layer weights (optional: 16 numbers for SD1.5, 11 for SDXL; replaces the weight type)"),
            placeholder="e.g. 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0", elem_id=eid("layer_weights"),
        )  # fmt: skip
        image_weights = gr.Textbox(label=label("Image weights (optional: one per reference image)"),
                                   placeholder="e.g. 1, 0.5", elem_id=eid("image_weights"))  # fmt: skip
        with gr.Row():
            negative = gr.Image(label=label("Negative image (optional)"), type="pil", elem_id=eid("negative_image"))
            mask = mask_input(label("Mask (optional)"), eid("mask"))
        gr.Markdown(HINT, elem_id=eid("mask_hint"))
        with gr.Row():
            composition_image = gr.Image(label=label("Composition image (optional)"), type="pil",
                                         elem_id=eid("composition_image"))  # fmt: skip
            sharpening = gr.Slider(label=label("Sharpening (before encoding)"), minimum=0, maximum=1, step=0.05,
                                   value=DEFAULTS.sharpening, elem_id=eid("sharpening"))  # fmt: skip
        with gr.Row():
            from_inpaint = gr.Checkbox(label=label("Use the inpaint mask as the mask"), value=DEFAULTS.mask_from_inpaint,
                                       visible=is_img2img, elem_id=eid("mask_from_inpaint"))  # fmt: skip
            invert = gr.Checkbox(label=label("Invert the mask"), value=DEFAULTS.mask_invert, elem_id=eid("mask_invert"))
        noise = gr.Slider(label=label("Noise (uncond: the negative image, or the references, blended with noise)"),
                          minimum=0, maximum=1, step=0.05, value=DEFAULTS.noise, elem_id=eid("noise"))  # fmt: skip
        with gr.Row():
            noise_type = gr.Dropdown(label=label("Noise type"), choices=[t.value for t in NoiseType],
                                     value=DEFAULTS.noise_type.value, elem_id=eid("noise_type"))  # fmt: skip
            noise_blur = gr.Slider(label=label("Noise blur (pixels)"), minimum=0, maximum=MAX_BLUR, step=1,
                                   value=DEFAULTS.noise_blur, elem_id=eid("noise_blur"))  # fmt: skip
        with gr.Row():
            lora = gr.Slider(label=label("FaceID LoRA strength"), minimum=LORA_STRENGTH_RANGE[0],
                             maximum=LORA_STRENGTH_RANGE[1], step=0.05, value=DEFAULTS.lora_strength,
                             elem_id=eid("lora_strength"))  # fmt: skip
            v2 = gr.Slider(label=label("FaceID v2 weight"), minimum=WEIGHT_RANGE[0], maximum=WEIGHT_RANGE[1],
                           step=0.05, value=DEFAULTS.faceid_v2_weight, elem_id=eid("faceid_v2_weight"))  # fmt: skip
    return [mode, layer_weights, combine, image_weights, negative, noise, mask, from_inpaint, invert, lora, v2,
            sharpening, noise_type, noise_blur, composition_image]  # fmt: skip
