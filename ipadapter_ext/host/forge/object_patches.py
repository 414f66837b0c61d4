"""Object patches that chain safely beside other scripts' patches on the same attributes.

Forge's ``ModelPatcher.get_model_object(name)`` answers, for a clone without a patch of its own
on ``name``, the attribute the model holds *now*. Between requests the model still holds the
patches of the clone that ran last (Forge only restores them when another clone of the model is
loaded), so a patch built on that answer chains onto another request's leftovers: another
script's stale hook (its state gone: KeyError), or an earlier wrapper of ours (a chain that grows
with every request). Forge later backs up and restores what it finds, so such a chain can even
outlive the request that made it.

So a patch here calls what **this clone's own patch list** holds for the attribute (a script
that ran before us in this request put it there; our own patch from an earlier pass is unwrapped,
never chained), and otherwise the attribute as the model's class defines it: ``forward`` is the
class's method bound to the module, whatever a previous clone left on the instance. A script that
runs after us clones our clone and finds our patch on its list, as Forge intends.

A patch whose generation has ended is inert: it calls the class's own method. Another script
that built its patch on our leftover (through ``get_model_object``) then still works, and never
reaches a stale hook through us.
"""

from __future__ import annotations

from typing import Any

_ABSENT = object()


def _owner(model: Any, name: str) -> tuple[Any, str]:
    *path, attr = name.split(".")
    obj = model
    for part in path:
        obj = getattr(obj, part)
    return obj, attr


def unpatched(model: Any, name: str) -> Any:
    """``name`` (an attribute path under the patcher's model) as the owner's class defines it:
    for a method, the class's function bound to the owner; otherwise the current attribute."""
    owner, attr = _owner(model, name)
    defined = getattr(type(owner), attr, None)
    if callable(defined) and hasattr(defined, "__get__"):
        return defined.__get__(owner, type(owner))
    return getattr(owner, attr)


def install_missing(model: Any, patches: dict[str, Any]) -> list[tuple[Any, str, Any]]:
    """Put each of ``patches`` (attribute path → patch) on ``model`` where the host has not, and
    return what to put back (:func:`put_back`).

    ersatzForge's memory manager runs a clone of the model it has loaded on that model as it is
    (``load_models_gpu``: "check for clones … can use already loaded"), without applying the
    clone's object patches; options read per call (the unet function wrapper) still reach it. So
    the wrapper puts the patches on for the length of its call, where they are not on already."""
    undo: list[tuple[Any, str, Any]] = []
    try:
        for name, patch in patches.items():
            owner, attr = _owner(model, name)
            if getattr(owner, attr, None) is patch:
                continue
            undo.append((owner, attr, owner.__dict__.get(attr, _ABSENT)))
            setattr(owner, attr, patch)
    except BaseException:
        put_back(undo)  # never leave half a set on the model
        raise
    return undo


def put_back(undo: list[tuple[Any, str, Any]]) -> None:
    """Undo :func:`install_missing`: each attribute as it was, the instance's own or none."""
    for owner, attr, old in reversed(undo):
        if old is _ABSENT:
            owner.__dict__.pop(attr, None)
        else:
            setattr(owner, attr, old)


def chain_target(patcher: Any, name: str, ours: tuple[type, ...]) -> Any:
    """What a new patch of ours on ``name`` must call: the patch on ``patcher``'s own list (ours,
    from an earlier pass, unwrapped to what it called), else :func:`unpatched`."""
    obj = getattr(patcher, "object_patches", {}).get(name)
    while isinstance(obj, ours):
        obj = obj.previous
    return obj if obj is not None else unpatched(patcher.model, name)


class ChainedPatch:
    """Base of our object patches: ``previous`` is what we call while our generation runs;
    ``pristine`` (the class's own method) once it has ended (``run.closed``)."""

    def __init__(self, previous: Any, pristine: Any, run: Any) -> None:
        self.previous = previous
        self.pristine = pristine
        self.run = run

    def call_previous(self, *args: Any, **kwargs: Any) -> Any:
        target = self.pristine if self.run.closed else self.previous
        return target(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> ChainedPatch:
        # A patch carries per-generation state that must stay shared with the run.
        return self
