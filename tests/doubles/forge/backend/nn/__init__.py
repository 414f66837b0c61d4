"""Doubles of ``backend/nn`` (see flux.py)."""
