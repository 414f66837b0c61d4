"""Taking our K/V modules off the host's list of loaded models once a pass is over.

The units' K/V (and Redux's tokens) reach Forge's memory management as extra modules of the
patched clone (``add_extra_torch_module_during_sampling`` wraps each in a new ``ModelPatcher``),
and when sampling starts memory management adds a ``LoadedModel`` entry for each to
``current_loaded_models``. A new clone of the UNet replaces the previous one there
(``unload_model_clones``), but each generation's K/V module is a new model, and the hosts seldom
take such an entry off: Forge Classic 1f95d717 and ersatzForge fca12a2 only to make room on a GPU,
Forge dfdcbab6 also drops entries nothing else refers to, but only on the way to a GPU load; no
code path calls ``cleanup_models``. So the list grew by one entry per generation with a unit (the
Forge soak on the CPU counted up to 38 between two checkpoint switches), every ``load_models_gpu`` walked it,
and on a GPU the entries could keep the modules they loaded there.

The entries are ours to remove: nobody else holds those modules. The entry is only dropped, not
unloaded: a K/V module holds no weights to restore, and its buffers are released with the
generation (``ForgeRun.release``), wherever the host last put them. reForge's newer manager
(weak references) would drop the entries itself once the module is collected; dropping them
first does not change that.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def forget(entries: list, modules: Iterable[nn.Module]) -> int:
    """Remove from ``entries`` (a host's ``current_loaded_models``) every entry whose patcher
    wraps one of ``modules``; return how many. Other entries stay, in their order."""
    ours = {id(m) for m in modules}  # the modules are alive (the caller holds them): ids are unique
    if not ours:
        return 0
    kept = [e for e in entries if id(getattr(getattr(e, "model", None), "model", None)) not in ours]
    removed = len(entries) - len(kept)
    if removed:
        entries[:] = kept  # in place: the host's module holds this list object
    return removed
