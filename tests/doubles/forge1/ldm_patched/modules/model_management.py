"""Double of the loaded-model list of ``ldm_patched/modules/model_management.py`` in Forge Classic
1f95d717 (own implementation): ``load_models_gpu(models, memory_required)`` moves a patcher
already loaded to the front; a new one first unloads every loaded clone of the same model
(``unload_model_clones``), then its model goes to ``load_device`` and a ``LoadedModel`` entry
(``.model`` the patcher; equal when the patcher is the same) joins ``current_loaded_models`` at
the front. Nothing else takes an entry off: Classic drops entries only in ``free_memory``, to make
room on a GPU, and never calls ``cleanup_models``. (reForge 3b56b268 holds its entries' patchers
weakly and drops the dead ones; the strong list is the case that can grow.)"""

from __future__ import annotations

current_loaded_models: list = []


class LoadedModel:
    def __init__(self, model, memory_required=0):
        self.model = model
        self.memory_required = memory_required

    def __eq__(self, other):
        return self.model is other.model


def load_models_gpu(models, memory_required=0) -> None:
    for patcher in models:
        entry = LoadedModel(patcher, memory_required)
        if entry in current_loaded_models:
            current_loaded_models.insert(0, current_loaded_models.pop(current_loaded_models.index(entry)))
            continue
        for other in [e for e in current_loaded_models if patcher.is_clone(e.model)]:
            current_loaded_models.remove(other)
        model = getattr(patcher, "model", None)
        if hasattr(model, "to"):
            model.to(patcher.load_device)
        current_loaded_models.insert(0, entry)


def reset() -> None:
    current_loaded_models.clear()
