"""Host-free IP-Adapter engine: formats, detection, projections, encoder, attention math, caches.

Only torch, safetensors, transformers, numpy and PIL are imported here, never the WebUI's
``modules`` or gradio, so everything in this package runs and is tested outside a WebUI.
Submodules are imported on use; importing the package itself does nothing.
"""
