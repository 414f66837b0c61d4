"""Marker double of reForge's / Forge Classic's ``modules_forge`` package. This directory
(tests/doubles/forge1) is put on ``sys.path`` only by the Forge 1 tests."""
