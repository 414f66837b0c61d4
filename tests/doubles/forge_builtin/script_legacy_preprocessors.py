"""Double of ``extensions-builtin/forge_legacy_preprocessors/scripts/legacy_preprocessors.py``
(Forge dfdcbab6), a script the WebUI executes at start and at every UI reload: each table entry
becomes a ``LegacyPreprocessor`` named by its label, registered with
``modules_forge.shared.add_supported_preprocessor``; calling it passes ``img``, ``res`` and the
thresholds to the entry's ``call_function``."""

from legacy_preprocessors.preprocessor_compiled import legacy_preprocessors
from modules_forge.shared import add_supported_preprocessor


class LegacyPreprocessor:
    def __init__(self, entry: dict) -> None:
        self.name = entry["label"]
        self.call_function = entry["call_function"]
        self.tags = []

    def __call__(self, input_image, resolution, slider_1=None, slider_2=None, slider_3=None, **kwargs):
        result, _is_image = self.call_function(img=input_image, res=resolution, thr_a=slider_1, thr_b=slider_2)
        return result


for _entry in legacy_preprocessors.values():
    add_supported_preprocessor(LegacyPreprocessor(_entry))
