"""Double of modules/scripts.py: ``Script``, ``AlwaysVisible`` and ``Script.elem_id``."""

import re

AlwaysVisible = object()


class Script:
    is_txt2img = True
    is_img2img = False

    def title(self):
        raise NotImplementedError

    def elem_id(self, item_id):
        # modules/scripts.py Script.elem_id: script_{tab}_{slug(title)}_{item}
        tab = "img2img" if self.is_img2img else "txt2img"
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tab}_{title}_{item_id}"
