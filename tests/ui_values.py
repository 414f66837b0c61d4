"""The values of an untouched unit in the UI, as gradio hands them to the script."""

#: What each UI component holds before the user touches it (text boxes hold "").
UI_VALUES = {"enabled": False, "image": None, "more_images": None, "model": "None", "encoder": "auto", "weight": 1.0,
             "start": 0.0, "end": 1.0, "crop": "center", "weight_type": "linear", "composition_weight": 1.0,
             "weight_mode": "V only", "layer_weights": "", "combine": "concat", "image_weights": "",
             "negative_image": None, "noise": 0.0, "mask": None, "image_from_init": False, "mask_from_inpaint": False,
             "mask_invert": False, "lora_strength": 0.6, "faceid_v2_weight": 1.0, "redux_strength_mode": "scale",
             "redux_downsample": 1, "redux_downsample_mode": "area", "style_boost": 1.0,
             "composition_boost": 0.0, "sharpening": 0.0, "reference_mask": None, "noise_type": "noise",
             "noise_blur": 0, "composition_image": None, "per_batch_image": False}  # fmt: skip
