"""Marker double: Forge ships a ``modules_forge`` package; its presence is how the extension
detects the host (``ipadapter_ext.host.is_forge``). This directory is put on ``sys.path`` only
by the Forge tests."""
