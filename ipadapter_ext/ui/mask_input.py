"""A mask the user can upload or paint, on gradio 3 (A1111) and gradio 4 (Forge).

gradio 3's ``Image(tool="sketch")`` returns ``{"image", "mask"}`` with the strokes white on black;
gradio 4 replaced it with ``ImageEditor`` (``{"background", "layers", "composite"}``). Both values
are read by :func:`ipadapter_ext.unit_inputs.decode_mask`: painted strokes win, otherwise the
uploaded picture itself is the mask.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

HINT = (
    "Optional. White is where this unit acts. Upload a black-and-white mask, or upload any picture of "
    "the output's shape and paint over the area; the mask is stretched to the output."
)
REFERENCE_MASK_HINT = (
    "Optional. Use only part of the reference: upload the reference (or a black-and-white mask of it) and paint "
    "over the part to use. The rest is blanked before encoding. Not where the unit acts: that is the Mask below."
)


def gradio_major() -> int:
    return int(str(gr.__version__).split(".", 1)[0])


def mask_input(label: str, elem_id: str) -> Any:
    if gradio_major() >= 4:
        brush = gr.Brush(colors=["#ffffff"], color_mode="fixed") if hasattr(gr, "Brush") else None
        return gr.ImageEditor(label=label, type="pil", brush=brush, eraser=None, elem_id=elem_id)
    return gr.Image(
        label=label,
        source="upload",
        tool="sketch",
        type="pil",
        brush_color="#ffffff",
        mask_opacity=0.6,
        elem_id=elem_id,
    )
