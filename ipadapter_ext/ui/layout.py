"""The order of the script's arguments, shared by the gradio UI and the argument parser.

New fields are appended, so older saved UI layouts keep their positions for the fields they had.
"""

UNIT_FIELDS = (
    "enabled",
    "image",
    "more_images",
    "model",
    "encoder",
    "weight",
    "start",
    "end",
    "crop",
    "weight_type",
    "composition_weight",
    "weight_mode",
    "layer_weights",
    "combine",
    "image_weights",
    "negative_image",
    "noise",
    "mask",
    "image_from_init",
    "mask_from_inpaint",
    "mask_invert",
    "lora_strength",
    "faceid_v2_weight",
    "redux_strength_mode",
    "redux_downsample",
    "redux_downsample_mode",
    "style_boost",
    "composition_boost",
    "sharpening",
    "reference_mask",
    "noise_type",
    "noise_blur",
    "composition_image",
    "per_batch_image",
)
#: Dropdown entry meaning "no model chosen".
NONE = "None"
