"""Adding the image term to cross-attention modules without replacing their forward.

Hosts swap attention implementations by assigning ``CrossAttention.forward`` at class level
(A1111's xformers/SDP/sub-quadratic/InvokeAI/Doggettx, hypernetworks), and other extensions
replace ``attn2.forward`` per instance. Replacing or capturing a forward here would freeze or
fight them. Instead three removable torch hooks are installed per module:

* a pre-hook on the ``attn2`` module records the call's input and context;
* a hook on ``to_q`` keeps the query the active implementation computed (no second ``to_q``);
* a pre-hook on ``to_out[0]`` adds ``Σ w·Attn(q, K_ip, V_ip)`` to its input, so the output
  projection and its bias run exactly once, for text and image together.

Every implementation A1111 ships calls ``self.to_q(x)`` and ``self.to_out…``; if one does not
call ``to_q``, the query is computed from the recorded input instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention import ImageKV, add_image_attention

#: (layer index in key order, q [B, N, inner], context or None) → the image terms for this call.
TermProvider = Callable[[int, torch.Tensor, "torch.Tensor | None"], Sequence[ImageKV]]


def output_linear(attn: nn.Module) -> nn.Module:
    """The output projection: ``to_out[0]`` of ldm/sgm/Forge (``Sequential``) and diffusers
    (``ModuleList``) attention, whose ``to_out`` is Linear + Dropout."""
    to_out = attn.to_out
    return to_out[0] if isinstance(to_out, nn.Sequential | nn.ModuleList) else to_out


@dataclass
class _Call:
    x: torch.Tensor | None = None
    context: torch.Tensor | None = None
    q: torch.Tensor | None = None
    pending: bool = False


@dataclass
class _Slot:
    index: int
    module: nn.Module
    call: _Call = field(default_factory=_Call)


class Attn2Hooks:
    """Hooks on a list of cross-attention modules (in adapter key order); a context manager.

    ``provider`` decides per call which terms apply (units, weights, schedule, row layout); it may
    return an empty sequence, in which case the module's output is untouched bit for bit.
    """

    def __init__(self, modules: Sequence[nn.Module], provider: TermProvider, upcast: bool = False) -> None:
        self.slots = [_Slot(i, m) for i, m in enumerate(modules)]
        self.provider = provider
        self.upcast = upcast
        self._handles: list[RemovableHandle] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> Attn2Hooks:
        if self._handles:
            return self
        try:
            for slot in self.slots:
                self._install(slot)
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Idempotent; safe to call from ``finally`` blocks and stale-hook sweeps."""
        while self._handles:
            self._handles.pop().remove()
        for slot in self.slots:
            slot.call = _Call()

    def __enter__(self) -> Attn2Hooks:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _install(self, slot: _Slot) -> None:
        module = slot.module
        out_linear = output_linear(module)

        def before_attn(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            context = kwargs.get("context", args[1] if len(args) > 1 else None)
            slot.call = _Call(x=args[0] if args else kwargs.get("x"), context=context, pending=True)

        def after_q(_m: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            if slot.call.pending and slot.call.q is None:
                slot.call.q = output

        def before_out(_m: nn.Module, args: tuple) -> tuple | None:
            call = slot.call
            if not call.pending:
                return None
            call.pending = False
            q = call.q if call.q is not None else module.to_q(call.x)
            terms = self.provider(slot.index, q, call.context)
            if not terms:
                return None
            return (add_image_attention(args[0], q, module.heads, terms, self.upcast), *args[1:])

        def after_attn(_m: nn.Module, _args: tuple, _output: torch.Tensor) -> None:
            slot.call = _Call()  # drop references to this call's activations

        self._handles += [
            module.register_forward_pre_hook(before_attn, with_kwargs=True),
            module.to_q.register_forward_hook(after_q),
            out_linear.register_forward_pre_hook(before_out),
            module.register_forward_hook(after_attn),
        ]
