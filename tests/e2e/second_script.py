"""A second extension that patches Flux's double blocks, installed into the scratch Forge before it
starts (issue 19 item 8: our patches beside another script's patches on the same attributes).

It is the e2e twin of ``tests/doubles/block_patching_script.py``, as an AlwaysVisible script: with
a factor other than 0 (its one API argument), its per-pass hook clones the UNet patcher, wraps each
double block's ``forward`` as ``get_model_object`` answers it (taking off its own wrapper from an
earlier request), scales the block's image output by the factor, and forgets the request's state in
``postprocess`` (a stale wrapper raises ``KeyError``). Two copies are installed, one sorting before
this extension and one after it, so a request picks the order by the script it enables; they share
their wrapper class and state (one script in two places), so neither chains onto the other's
leftovers, as one script never does onto its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: (extension folder, script title): the first loads before ``sd-webui-ipadapter``, the second after.
SCRIPTS = (("a-e2e-block-scaler", "e2e block scaler before"), ("zz-e2e-block-scaler", "e2e block scaler after"))

_SOURCE = '''"""Written by sd-webui-ipadapter's e2e suite (tests/e2e/second_script.py); removed after the run."""
import sys
import types

import gradio as gr
from modules import scripts

PATH = "diffusion_model.double_blocks.{{}}.forward"
# Both copies are one script: they share the wrapper class and the per-request state, so each
# recognises (and takes off) the other's leftover as its own.
SHARED = sys.modules.setdefault("e2e_block_scaler_shared", types.ModuleType("e2e_block_scaler_shared"))
if not hasattr(SHARED, "ScaledBlock"):

    class ScaledBlock:
        def __init__(self, original, token):
            self.original, self.token = original, token

        def __call__(self, *args, **kwargs):
            factor = SHARED.LIVE[self.token]
            img, txt = self.original(*args, **kwargs)
            return img * factor, txt

    SHARED.ScaledBlock, SHARED.LIVE = ScaledBlock, {{}}
ScaledBlock, LIVE = SHARED.ScaledBlock, SHARED.LIVE


class Script(scripts.Script):
    def title(self):
        return "{title}"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.Number(value=0, visible=False, label="{title} factor")]

    def process_before_every_sampling(self, p, factor=0, *args, **kwargs):
        if not factor:
            return
        unet = p.sd_model.forge_objects.unet
        if not hasattr(unet.model.diffusion_model, "double_blocks"):
            return
        token = getattr(p, "_e2e_scaler_token", None)
        if token is None:
            token = p._e2e_scaler_token = object()
            LIVE[token] = float(factor)
        unet = unet.clone()
        for n in range(len(unet.model.diffusion_model.double_blocks)):
            original = unet.get_model_object(PATH.format(n))
            while isinstance(original, ScaledBlock):
                original = original.original
            unet.add_object_patch(PATH.format(n), ScaledBlock(original, token))
        p.sd_model.forge_objects.unet = unet

    def postprocess(self, p, processed, *args):
        LIVE.pop(getattr(p, "_e2e_scaler_token", None), None)
'''


def _cache_tag(python: str) -> str:
    """The server interpreter's bytecode tag (``cpython-311``): where it caches the loaded script."""
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "cpython-311"


def install(root: Path, python: str, created: list[Path]) -> None:
    """Write both copies into ``root/extensions``, appending to ``created`` what the run leaves
    there (the script, and the bytecode the server may cache beside it), in creation order."""
    tag = _cache_tag(python)
    for folder, title in SCRIPTS:
        ext = root / "extensions" / folder
        if ext.exists():
            continue
        scripts_dir = ext / "scripts"
        scripts_dir.mkdir(parents=True)
        path = scripts_dir / "e2e_block_scaler.py"
        path.write_text(_SOURCE.format(title=title))
        cache = scripts_dir / "__pycache__"
        created.extend([ext, scripts_dir, path, cache, cache / f"e2e_block_scaler.{tag}.pyc"])
