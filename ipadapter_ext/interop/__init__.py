"""Integrations with other parts of the WebUI (the built-in X/Y/Z plot script)."""
