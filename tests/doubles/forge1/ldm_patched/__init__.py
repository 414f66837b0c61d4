"""Doubles of the parts of Forge 1's ``ldm_patched`` package the extension calls or looks for."""
