"""Opt-in end-to-end tests against a real WebUI over HTTP (see ``conftest.py``)."""
