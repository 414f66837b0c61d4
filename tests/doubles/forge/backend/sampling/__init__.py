"""Doubles of ``backend/sampling`` (see sampling_function.py)."""
