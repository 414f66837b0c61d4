"""Double of ``backend/memory_management.py`` of lllyasviel/stable-diffusion-webui-forge at dfdcbab6
(own implementation): the part that decides where patchers' models are when sampling starts.

``load_models_gpu(models, memory_required, hard_memory_preservation)``: a patcher already loaded
moves to the front; each new one first unloads every loaded clone of the same model
(``unload_model_clones``, without moving it), then is loaded: its model goes to ``load_device``
(``forge_patch_model``; for a UNet patcher the ``diffusion_model``), and a ``LoadedModel`` entry
for it (``.model`` the patcher; equal when the patcher is the same) joins ``current_loaded_models``
at the front. Nothing takes an entry off but a clone's load and ``unload_all_models``: Forge drops
entries otherwise only in ``free_memory``, which it runs for a GPU only, and never calls
``cleanup_models``. ``hard_memory_preservation`` (what patchers asked to keep free) is
recorded for the tests. Nothing is offloaded for lack of memory here (the fake GPU has no size);
``unload_all_models`` sends everything back to ``offload_device``.
"""

from __future__ import annotations

current_loaded_models: list = []


class LoadedModel:
    def __init__(self, model):
        self.model = model

    def __eq__(self, other):
        return self.model is other.model


#: Per call of load_models_gpu: (the patchers asked for, hard_memory_preservation).
calls: list = []


def _module(patcher):
    model = patcher.model
    return model if hasattr(model, "to") and hasattr(model, "parameters") else model.diffusion_model


def _load(patcher) -> None:
    _module(patcher).to(patcher.load_device)
    patcher.model_patches_to(patcher.load_device)
    patcher.forge_patch_model(patcher.load_device)
    patcher.current_device = patcher.load_device


def _unload(patcher, move: bool = True) -> None:
    patcher.forge_unpatch_model(patcher.offload_device if move else None)
    if move:
        _module(patcher).to(patcher.offload_device)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0) -> None:
    calls.append((list(models), hard_memory_preservation))
    for patcher in models:
        entry = LoadedModel(patcher)
        if entry in current_loaded_models:
            current_loaded_models.insert(0, current_loaded_models.pop(current_loaded_models.index(entry)))
            continue
        for other in [e for e in current_loaded_models if patcher.is_clone(e.model)]:
            current_loaded_models.remove(other)
            _unload(other.model, move=False)
        _load(patcher)
        current_loaded_models.insert(0, entry)


def unload_all_models() -> None:
    while current_loaded_models:
        _unload(current_loaded_models.pop().model)


def soft_empty_cache(force=False) -> None:
    pass


def reset() -> None:
    current_loaded_models.clear()
    calls.clear()
