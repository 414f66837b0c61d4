"""Encoder outputs → image tokens of the UNet's context width."""
