"""A second extension patching Flux's double blocks, the way Forge extensions use the patcher's
object-patch contract (``backend/patcher/base.py`` of lllyasviel/stable-diffusion-webui-forge at
dfdcbab6: ``clone``, ``get_model_object``, ``add_object_patch``). Own code written for the tests:
no public extension does exactly this; it does what a typical one does.

Per request, in its per-pass hook, it clones the UNet patcher on ``p.sd_model.forge_objects``,
reads each double block's ``forward`` through ``get_model_object`` (which answers the model's
current attribute when the clone has no patch of its own, so it can see what an earlier request's
clone left there), takes off a wrapper of its own found there (so it works alone, request after
request), wraps the rest in :class:`ScaledBlock`, and sets the clone back. A wrapper scales the
block's image output by the request's factor. The factor lives in per-request state that
``postprocess`` deletes, so a wrapper called after its request ended raises ``KeyError``, as the
real script in the issue did when our patches chained onto its leftovers.
"""

from __future__ import annotations

from typing import Any

PATH = "diffusion_model.double_blocks.{}.forward"


class ScaledBlock:
    def __init__(self, original: Any, live: dict, token: object) -> None:
        self.original = original
        self.live = live
        self.token = token

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        factor = self.live[self.token]  # KeyError once the request that made this wrapper has ended
        img, txt = self.original(*args, **kwargs)
        return img * factor, txt


class BlockScalingScript:
    """``before_sampling(p)`` / ``postprocess(p)``, called where Forge calls an AlwaysVisible
    script's ``process_before_every_sampling`` and ``postprocess``."""

    def __init__(self, factor: float = 0.9) -> None:
        self.factor = factor
        self.live: dict[object, float] = {}
        self.calls = 0

    def before_sampling(self, p: Any) -> None:
        token = getattr(p, "_scaling_token", None)
        if token is None:
            token = p._scaling_token = object()
            self.live[token] = self.factor
        unet = p.sd_model.forge_objects.unet.clone()
        for n in range(len(unet.model.diffusion_model.double_blocks)):
            name = PATH.format(n)
            original = unet.get_model_object(name)
            while isinstance(original, ScaledBlock):  # its own leftover from an earlier request
                original = original.original
            unet.add_object_patch(name, ScaledBlock(original, self.live, token))
        p.sd_model.forge_objects.unet = unet
        self.calls += 1

    def postprocess(self, p: Any) -> None:
        self.live.pop(getattr(p, "_scaling_token", None), None)
