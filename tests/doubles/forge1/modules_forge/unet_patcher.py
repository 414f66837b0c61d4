"""Marker double of ``modules_forge/unet_patcher.py`` (reForge main 3b56b268, Forge Classic 1f95d717):
with ``ldm_patched/modules/model_patcher.py`` it tells the Forge 1 family (``ipadapter_ext.host.detect``).
The patcher's behaviour is doubled in tests/doubles/forge1_patcher.py."""

from tests.doubles.forge1_patcher import UnetPatcher

__all__ = ["UnetPatcher"]
