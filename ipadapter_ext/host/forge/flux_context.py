"""Flux Redux on Forge: context tokens appended in the unet function wrapper, and the attention
bias (strength as a bias, region masks) given to Forge's Flux attention.

Forge's ``IntegratedFluxTransformer2DModel.forward`` (``backend/nn/flux.py``, dfdcbab6) takes the
T5 tokens as ``context`` and makes the text positions (all zero) from its length, so longer
contexts need nothing else. The wrapper appends the active units' tokens to the cond rows'
``c_crossattn``; uncond rows (true CFG) keep theirs, so a call holding both is split into one
call per chunk (contexts of different lengths cannot share a batch) and the outputs are joined in
Forge's order.

A bias needs the attention itself. Forge's Flux blocks call the module function
``attention(q, k, v, pe)``, which looks ``attention_function`` up in that module's namespace on
each call and has no mask argument. So while the wrapper runs a cond call that needs a bias (and
only then), that name is bound to a function running PyTorch's SDPA with the bias, and restored in
a ``finally``; every other attention call of Forge runs untouched. Forge samples on one thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...core.attend.context import ContextUnit, context_bias, context_rows
from ...core.errors import IPAdapterError
from .attn2_patch import ForgeRun

_NAME = "attention_function"


def image_tokens(extra: dict) -> int | None:
    """Image tokens of a Flux call from its latent's shape (2×2 patches, odd sides padded)."""
    shape = extra.get("original_shape")
    if shape is None or len(shape) != 4:
        return None
    return math.ceil(int(shape[2]) / 2) * math.ceil(int(shape[3]) / 2)


def attention_namespace(diffusion_model: Any) -> dict | None:
    """The namespace Forge's Flux blocks look ``attention_function`` up in, or ``None``."""
    blocks = getattr(diffusion_model, "double_blocks", None)
    if not blocks:
        return None
    namespace = getattr(type(blocks[0]).forward, "__globals__", None)
    return namespace if isinstance(namespace, dict) and _NAME in namespace else None


def _biased(original: Callable, bias: torch.Tensor) -> Callable:
    def attention_function(q, k, v, heads, *args: Any, skip_reshape: bool = False, **kwargs: Any):
        if not skip_reshape or args or kwargs.get("mask") is not None or q.shape[2] != bias.shape[-1]:
            return original(q, k, v, heads, *args, skip_reshape=skip_reshape, **kwargs)
        b, _, _, d = q.shape
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(device=q.device, dtype=q.dtype))
        return out.transpose(1, 2).reshape(b, -1, heads * d)

    return attention_function


@contextmanager
def biased_attention(namespace: dict, bias: torch.Tensor) -> Iterator[None]:
    original = namespace[_NAME]
    namespace[_NAME] = _biased(original, bias)
    try:
        yield
    finally:
        namespace[_NAME] = original


class _TokenModule(nn.Module):
    """The units' tokens as buffers, handed to Forge's memory management like the K/V."""

    def __init__(self, units: Sequence[ContextUnit]) -> None:
        super().__init__()
        self._units = list(units)
        for i, unit in enumerate(self._units):
            self.register_buffer(f"tokens_{i}", unit.tokens, persistent=False)

    def release(self) -> None:
        """The generation is over: the clone Forge keeps until the next one no longer holds the tokens."""
        self._units = []
        self._buffers.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> _TokenModule:
        super()._apply(fn, *args, **kwargs)
        for i, unit in enumerate(self._units):
            unit.tokens = getattr(self, f"tokens_{i}")
        return self


def _rows_of(args: dict, start: int, stop: int, chunk: int) -> dict:
    """``args`` of a unet-wrapper call restricted to rows [start, stop), one chunk of it."""
    rows = int(args["input"].shape[0])

    def cut(value: Any) -> Any:
        return value[start:stop] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows else value

    c = {k: cut(v) for k, v in args["c"].items()}
    options = c.get("transformer_options")
    if isinstance(options, dict):
        c["transformer_options"] = {**{k: cut(v) for k, v in options.items()}, "cond_or_uncond": [chunk]}
    return {
        **args,
        "input": args["input"][start:stop],
        "timestep": cut(args["timestep"]),
        "c": c,
        "cond_or_uncond": [chunk],
    }


class ContextUnits:
    """The Redux units of one pass: which are active at a call, and the call with their tokens."""

    def __init__(self, units: Sequence[ContextUnit], run: ForgeRun, namespace: dict | None) -> None:
        self.units = list(units)
        self.run = run  # the clock and sigma ranges decide the active units (start/end)
        self.namespace = namespace
        #: The last bias built: every call of a pass with the same active units and sizes reuses it.
        self._bias: tuple[tuple, torch.Tensor] | None = None
        if namespace is None and any(u.needs_bias for u in self.units):
            raise IPAdapterError(
                "this Forge's Flux has no attention_function to give a bias to, so Redux's 'attention bias' "
                "strength and region masks cannot apply here. Use the 'scale' strength mode without a mask."
            )

    def module(self) -> nn.Module:
        return _TokenModule(self.units)

    def run_call(self, args: dict, observe: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        """Run one wrapper call: with the active units' tokens on its cond rows."""
        sigmas = args["timestep"]
        sigma = float(sigmas.reshape(-1)[0]) if isinstance(sigmas, torch.Tensor) and sigmas.numel() else None
        active = self.run.active_units(sigma)
        chunks = [int(c) for c in args["cond_or_uncond"]]
        if not active or 0 not in chunks:
            return observe(args)
        if all(c == 0 for c in chunks):
            return self._with_tokens(args, active, observe)
        per = int(args["input"].shape[0]) // len(chunks)
        outs = []
        for i, chunk in enumerate(chunks):
            sub = _rows_of(args, i * per, (i + 1) * per, chunk)
            outs.append(self._with_tokens(sub, active, observe) if chunk == 0 else observe(sub))
        return torch.cat(outs)

    def _with_tokens(self, args: dict, active: list, observe: Callable[[dict], torch.Tensor]) -> torch.Tensor:
        c = dict(args["c"])
        context = c["c_crossattn"]
        rows = int(context.shape[0])
        per_chunk = rows // len(args["cond_or_uncond"])
        refs = [i % per_chunk for i in range(rows)]
        added = context_rows(active, refs).to(device=context.device, dtype=context.dtype)
        c["c_crossattn"] = torch.cat((context, added), dim=1)
        call = {**args, "c": c}
        if not any(u.needs_bias for u in active):
            return observe(call)
        assert self.namespace is not None
        with biased_attention(self.namespace, self._bias_for(active, context, args["input"].shape)):
            return observe(call)

    def _bias_for(self, active: list, context: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The additive mask for this call, in the context's dtype and device (built once per pass
        and size: a step's calls and the next steps share it)."""
        latent_hw = (int(shape[-2]), int(shape[-1]))
        key = (tuple(id(u) for u in active), int(context.shape[1]), latent_hw, context.device, context.dtype)
        if self._bias is None or self._bias[0] != key:
            image = math.ceil(latent_hw[0] / 2) * math.ceil(latent_hw[1] / 2)
            bias = context_bias(active, int(context.shape[1]), image, latent_hw, context.device, context.dtype)
            assert bias is not None
            self._bias = (key, bias)
        return self._bias[1]
