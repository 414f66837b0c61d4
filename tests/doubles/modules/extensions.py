"""Double of modules/extensions.py: ``active()`` lists the enabled extensions (tests fill it)."""

installed: list = []


def active():
    return list(installed)
