"""What Forge 1 (reForge main, Forge Classic) reads from its host: ComfyUI's model objects under
``ldm_patched/``, where Forge 2 has its ``backend/``. The patcher contract itself (clone, attn2
replace keys, ``extra_options``, extra modules during sampling) is Forge 2's, so the glue in
``host/forge/`` serves both with these :class:`~..forge.readers.Readers`.

Read in reForge main 3b56b268 and Forge Classic 1f95d717 (``classic`` branch):

* kernel: ``ldm_patched/ldm/modules/attention.py``'s ``CrossAttention.forward`` calls the module's
  ``optimized_attention(q, k, v, heads)``; reForge adds ``attn_precision=`` (also put in
  ``extra_options["attn_precision"]`` by its transformer block), Forge Classic has no such
  parameter. The name is looked up on the module at every call, as the host's own layer does.
* loaded models: ``ldm_patched/modules/model_management.py``'s ``current_loaded_models``.
* schedule: ``BaseModel.model_sampling`` (``ldm_patched/modules/model_sampling.py``), whose
  ``percent_to_sigma`` is what ComfyUI's ControlNet gates by.
* dtype: ``BaseModel.manual_cast_dtype`` when the weights are cast for compute (e.g. fp8 or bf16
  weights on a card computing in fp16), else ``get_dtype()``, the UNet's own.
"""

from __future__ import annotations

from typing import Any

import torch

from ..forge.readers import Readers, model_object

NO_FLUX = (
    "IP-Adapter: this WebUI is of the Forge 1 family (reForge, Forge Classic), where the extension's Flux path "
    "does not run (it patches Forge 2's backend/nn/flux.py). Use an SD1.5 or SDXL checkpoint here, or Forge / "
    "ersatzForge for Flux IP-Adapters."
)


def ldm_patched_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The kernel ``ldm_patched``'s ``CrossAttention`` calls, with the same arguments."""
    from ldm_patched.ldm.modules import attention

    heads = int(extra_options["n_heads"])
    if "attn_precision" in extra_options:  # reForge
        return attention.optimized_attention(q, k, v, heads, attn_precision=extra_options["attn_precision"])
    return attention.optimized_attention(q, k, v, heads)  # Forge Classic


def forge1_schedule(patcher: Any) -> Any:
    return model_object(patcher, "model_sampling")


def forge1_dtype(patcher: Any) -> torch.dtype | None:
    cast = model_object(patcher, "manual_cast_dtype")
    if cast is not None:
        return cast
    get_dtype = getattr(patcher.model, "get_dtype", None)
    return get_dtype() if callable(get_dtype) else None


def forge1_prepare(patcher: Any, x: Any) -> None:
    """``modules_forge.forge_sampler.sampling_prepare`` (reForge 3b56b268, Forge Classic 1f95d717;
    imported at call time)."""
    from modules_forge.forge_sampler import sampling_prepare

    sampling_prepare(patcher, x)


def forge1_loaded_models() -> list:
    """``ldm_patched.modules.model_management.current_loaded_models`` (imported at call time)."""
    from ldm_patched.modules import model_management

    return model_management.current_loaded_models


FORGE1 = Readers(
    "Forge 1", ldm_patched_attention, forge1_schedule, forge1_dtype, forge1_prepare, forge1_loaded_models,
    no_flux=NO_FLUX,
)  # fmt: skip
