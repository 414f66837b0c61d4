"""Marker double: both Forge families ship a ``modules_forge`` package; with ``backend/patcher/unet.py``
it tells Forge 2 (``ipadapter_ext.host.detect``). This directory is put on ``sys.path`` only by the
Forge tests."""
