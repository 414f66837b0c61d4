"""Double of ``annotator/annotator_path.py`` (sd-webui-controlnet 56cec5b2): ``models_path`` is the
preprocessor model folder, the ``control_net_modules_path`` setting or the
``--controlnet-annotator-models-path`` flag, else ``annotator/downloads`` (resolved at import; the
tests set it to a temporary folder right after importing)."""

import os

models_path = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "downloads"))
