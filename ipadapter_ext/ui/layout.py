"""The order of the script's arguments, shared by the gradio UI and the argument parser."""

UNIT_FIELDS = ("enabled", "image", "more_images", "model", "encoder", "weight", "start", "end", "crop")
#: Dropdown entry meaning "no model chosen".
NONE = "None"
