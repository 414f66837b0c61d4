"""Double of ``sampling_prepare``/``sampling_cleanup`` in ``backend/sampling/sampling_function.py``
of lllyasviel/stable-diffusion-webui-forge at dfdcbab6 (own implementation): when a sampler
starts (and after a refiner switch), the UNet patcher and the extra patchers it carries for sampling
(``add_extra_torch_module_during_sampling``) are loaded together by memory management, with the
memory they asked to keep free (``extra_preserved_memory_during_sampling``)."""

from __future__ import annotations

from backend import memory_management


def sampling_prepare(unet, x) -> None:
    memory_management.load_models_gpu(
        models=[unet, *unet.extra_model_patchers_during_sampling],
        memory_required=0,
        hard_memory_preservation=unet.extra_preserved_memory_during_sampling,
    )


def sampling_cleanup(unet) -> None:
    pass
