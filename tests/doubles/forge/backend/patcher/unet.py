"""Marker double of ``backend/patcher/unet.py`` of lllyasviel/stable-diffusion-webui-forge (dfdcbab6):
its presence (with ``modules_forge``) is how the extension tells the Forge 2 family
(``ipadapter_ext.host.detect``). The patcher's behaviour is doubled in tests/doubles/forge_backend.py."""

from tests.doubles.forge_backend import UnetPatcher

__all__ = ["UnetPatcher"]
