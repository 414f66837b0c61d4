"""What a patcher family reads from its host, apart from the patcher contract the families share.

Forge 2 (``backend/``) and Forge 1 (``ldm_patched/``, reForge and Forge Classic) both take attn2
replace patches on a clone of the UNet patcher with the same keys and ``extra_options``, so
``generation.py`` serves both. Five things differ, and each family names its own in a
:class:`Readers`:

* the attention kernel the host's own ``CrossAttention`` calls (the patch calls it in its place,
  so that weight 0 gives the host's output bit for bit);
* the sigma schedule on the model object, for UNet calls the denoiser did not report;
* the dtype the UNet computes in, for the K/V;
* where ``sampling_prepare`` lives (a refiner loaded mid-sampling is prepared again);
* where memory management keeps its list of loaded models (the K/V modules we hand it are taken
  off that list when the generation's passes end: ``loaded_models.py``).

Model attributes are read through the patcher's object patches first (what
``get_model_object`` does where the patcher has it): another extension may have replaced the
schedule or the compute dtype on this clone only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: (q, k, v, extra_options) → attention output before ``to_out``, as the host computes it
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def model_object(patcher: Any, name: str) -> Any:
    """``name`` on the patcher's model as the clone will see it when it samples: an object patch,
    else the original kept while patched, else the attribute (``None`` if there is none)."""
    for table in ("object_patches", "object_patches_backup"):
        patches = getattr(patcher, table, None)
        if isinstance(patches, dict) and name in patches:
            return patches[name]
    return getattr(patcher.model, name, None)


@dataclass(frozen=True)
class Readers:
    family: str
    attention: Kernel
    #: patcher → the model's sigma schedule (anything with ``percent_to_sigma``), or None
    schedule: Callable[[Any], Any]
    #: patcher → the dtype the UNet computes in, or None when the model does not say
    dtype: Callable[[Any], torch.dtype | None]
    #: (UNet patcher, latent) → the host's ``sampling_prepare``: memory management loads the patcher
    #: with its extra patchers (a refiner loaded mid-sampling needs it again)
    prepare: Callable[[Any, Any], None]
    #: the host's ``current_loaded_models`` (entries with ``.model``, the patcher), the list itself
    loaded_models: Callable[[], list]
    #: why this family cannot run Flux adapters ("" where it can)
    no_flux: str = ""


def forge2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """``backend.attention.attention_function``, the kernel Forge's ``CrossAttention`` calls
    (imported at call time: it exists only inside Forge)."""
    from backend.attention import attention_function

    return attention_function(q, k, v, int(extra_options["n_heads"]))


def forge2_schedule(patcher: Any) -> Any:
    """Forge 2 keeps the schedule in the model's ``predictor``."""
    return model_object(patcher, "predictor")


def forge2_dtype(patcher: Any) -> torch.dtype | None:
    """Forge 2's model says what it computes in: ``computation_dtype``."""
    return model_object(patcher, "computation_dtype")


def forge2_prepare(patcher: Any, x: Any) -> None:
    """``backend.sampling.sampling_function.sampling_prepare`` (imported at call time)."""
    from backend.sampling.sampling_function import sampling_prepare

    sampling_prepare(patcher, x=x)


def forge2_loaded_models() -> list:
    """``backend.memory_management.current_loaded_models`` (imported at call time)."""
    from backend import memory_management

    return memory_management.current_loaded_models


FORGE2 = Readers("Forge 2", forge2_attention, forge2_schedule, forge2_dtype, forge2_prepare, forge2_loaded_models)
