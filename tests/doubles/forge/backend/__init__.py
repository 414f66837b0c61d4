"""Doubles of the parts of Forge's ``backend`` package the extension calls (see attention.py)."""
