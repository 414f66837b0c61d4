"""Called by the WebUI when the extension is installed or updated.

The extension needs only what the WebUI already installs (torch, safetensors, transformers,
numpy, Pillow, gradio, pydantic), so nothing is installed; this checks that the WebUI's
transformers is recent enough to build CLIP vision encoders and says what to do if not.
"""

import importlib.metadata

try:
    version = importlib.metadata.version("transformers")
except importlib.metadata.PackageNotFoundError:
    version = None
if version is None or tuple(int(x) for x in version.split(".")[:2] if x.isdigit()) < (4, 25):
    print(f"[IP-Adapter] transformers {version} is too old; 4.25 or newer is needed (the WebUI pins 4.30.2).")
