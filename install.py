"""Called by the WebUI when the extension is installed or updated (and at each start).

The extension needs only what the WebUI already installs (torch, safetensors, transformers,
numpy, Pillow, gradio, pydantic). This checks that the WebUI's transformers can build CLIP vision
encoders, and installs onnxruntime, which FaceID's face analysis runs on, only when a FaceID model
is in the model folders or ``IPADAPTER_FACEID=1`` asks for it.
"""

import importlib.metadata
import os
import sys
from pathlib import Path

try:
    version = importlib.metadata.version("transformers")
except importlib.metadata.PackageNotFoundError:
    version = None
if version is None or tuple(int(x) for x in version.split(".")[:2] if x.isdigit()) < (4, 25):
    print(f"[IP-Adapter] transformers {version} is too old; 4.25 or newer is needed (the WebUI pins 4.30.2).")

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from ipadapter_ext.face_setup import install_onnxruntime, install_reason

    try:
        from modules.paths_internal import models_path
    except ImportError:  # run outside the WebUI
        models_path = str(Path.cwd() / "models")
    why = install_reason(Path(models_path), dict(os.environ))
    if why:
        print(f"[IP-Adapter] installing onnxruntime for FaceID face analysis ({why}) …")
        if install_onnxruntime() != 0:
            print("[IP-Adapter] installing onnxruntime failed; FaceID units will say so until it is installed.")
except Exception as exc:  # the installer must never stop the WebUI from starting
    print(f"[IP-Adapter] FaceID set-up check skipped: {exc}")
