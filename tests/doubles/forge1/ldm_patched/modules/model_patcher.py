"""Marker double of ``ldm_patched/modules/model_patcher.py`` (reForge main 3b56b268); the behaviour
is doubled in tests/doubles/forge1_patcher.py."""

from tests.doubles.forge1_patcher import ModelPatcher

__all__ = ["ModelPatcher"]
