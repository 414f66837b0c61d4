"""Double of ``sampling_prepare``/``sampling_cleanup`` in ``modules_forge/forge_sampler.py`` of the
Forge 1 family (reForge 3b56b268, Forge Classic 1f95d717; own implementation): when a sampler starts
(and after a refiner switch), the UNet patcher and the extra patchers it carries for sampling are
loaded together by ``ldm_patched``'s model management (``load_models_gpu``), with the memory they asked to keep free
(``extra_preserved_memory_during_sampling``). Each load is recorded in :data:`loads`."""

from __future__ import annotations

from ldm_patched.modules import model_management

#: (patchers loaded together, memory asked to keep free) per ``sampling_prepare``
loads: list[tuple[list, int]] = []


def sampling_prepare(unet, x) -> None:
    models = [unet, *unet.extra_model_patchers_during_sampling]
    model_management.load_models_gpu(models, memory_required=unet.extra_preserved_memory_during_sampling)
    loads.append((models, unet.extra_preserved_memory_during_sampling))


def sampling_cleanup(unet) -> None:
    pass
