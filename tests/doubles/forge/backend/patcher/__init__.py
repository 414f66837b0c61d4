"""Marker double of Forge's ``backend/patcher`` package (see unet.py)."""
