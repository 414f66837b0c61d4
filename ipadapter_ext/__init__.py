"""sd-webui-ipadapter: IP-Adapter image prompts for the AUTOMATIC1111 and Forge WebUIs.

Importing this package does no work: submodules are imported by whoever needs them, so the
WebUI start-up and the API's ``ui()`` calls stay cheap.
"""

__version__ = "0.2.0"
