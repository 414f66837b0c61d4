"""A second device for the doubles, so that a tensor on the wrong device fails as it does on a GPU.

On a CPU-only machine every tensor sits on one device, which hides the class of defect where a
tensor we keep (K/V, masks, the encoder, LoRA weights) is not where the host runs the UNet
(A1111's --medvram/--lowvram move it in forward pre-hooks; the refiner replaces it; Forge's
memory manager loads and offloads). Inside :func:`fake_gpu`:

* ``GPU`` (the ``meta`` device) stands for ``cuda:0``. A tensor moved or created there is an
  :class:`OnGPU`: it reports ``device == meta`` but keeps real values, computed on the CPU, so a
  generation on the "GPU" gives the same numbers as on the CPU and tests can compare them.
* Every operation checks its operands the way CUDA kernels do: all on one device, except 0-dim
  CPU tensors (scalars) and the copy operations (``to``, ``copy_``). Mixing raises
  ``RuntimeError: Expected all tensors to be on the same device`` — loudly, where plain ``meta``
  tensors would not (``F.linear`` and ``index_select`` accept a CPU operand next to a meta one).
* ``.cpu()``/``.to("cpu")`` give plain CPU tensors back, ``float()``/``.item()`` read the value
  (a synchronising read, as on CUDA), and ``.numpy()`` refuses, as for a CUDA tensor.

Use it as ``with fake_gpu(): ...`` around a test body; ``modules.devices.device = GPU`` makes the
doubles' host put its models there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

GPU = torch.device("meta")
CPU = torch.device("cpu")

#: Operations that legitimately take tensors across devices: copies, and questions about types
#: (``Module.to`` asks whether the new tensor can replace the old one's data in place).
_CROSS_DEVICE = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
_SHALLOW_COPY = torch.ops.aten._has_compatible_shallow_copy_type.default
#: Indexing accepts CPU index tensors for a GPU tensor (as CUDA does).
_CPU_INDICES_OK = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}


class DeviceMismatch(RuntimeError):
    """What CUDA raises when an operation gets tensors on two devices."""


class OnGPU(torch.Tensor):
    """A tensor "on the GPU": reports ``GPU`` as its device, holds its values in ``elem`` (CPU)."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> OnGPU:
        if elem.device.type != CPU.type:
            raise DeviceMismatch(f"the fake GPU holds CPU values, not a {elem.device.type} tensor")
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls,
            elem.size(),
            strides=elem.stride(),
            storage_offset=elem.storage_offset(),
            dtype=elem.dtype,
            layout=elem.layout,
            device=GPU,
            requires_grad=elem.requires_grad,
        )
        wrapper.elem = elem
        return wrapper

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"OnGPU({self.elem!r})"

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor first.")

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _run(func, args, kwargs or {})


def _is_gpu_device(value: Any) -> bool:
    return value is not None and torch.device(value).type == GPU.type


def _device_kinds(func: Any, args: tuple, kwargs: dict) -> set[str]:
    flat, _ = tree_flatten((args, kwargs))
    kinds = set()
    for t in flat:
        if isinstance(t, OnGPU):
            kinds.add("gpu")
        elif isinstance(t, torch.Tensor):
            if t.dim() == 0 and t.device.type == "cpu":
                continue  # CPU scalars mix with GPU tensors, as on CUDA
            if t.device.type == GPU.type:
                raise DeviceMismatch(f"{func}: a data-less meta tensor met the fake GPU (created outside fake_gpu?)")
            kinds.add(t.device.type)
    return kinds


def _run(func: Any, args: tuple, kwargs: dict) -> Any:
    if func is _SHALLOW_COPY:  # ``Module.to`` asks whether ``.data =`` may swap in the new tensor:
        return isinstance(args[0], OnGPU) == isinstance(args[1], OnGPU)  # not across devices (as CUDA)
    kinds = _device_kinds(func, args, kwargs)
    cpu_indices = func in _CPU_INDICES_OK and isinstance(args[0], OnGPU)
    if len(kinds) > 1 and func not in _CROSS_DEVICE and not cpu_indices:
        raise DeviceMismatch(
            f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
            f"(fake GPU: {func})"
        )
    # a target device, as a keyword (factories, ``_to_copy``) or positionally (``aten.to.device``)
    targets = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, torch.device)]
    if any(t.type == GPU.type for t in targets):
        to_gpu = True
    elif targets:
        to_gpu = False
    else:
        to_gpu = "gpu" in kinds

    def unwrap(value: Any) -> Any:
        if isinstance(value, OnGPU):
            return value.elem
        if isinstance(value, torch.device) and value.type == GPU.type:
            return CPU
        return value

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if func is torch.ops.aten.copy_.default:
        return args[0]
    if func._schema.is_mutable and args and isinstance(args[0], OnGPU) and out is args[0].elem:
        return args[0]  # in place on a GPU tensor: the same object back
    if not to_gpu:
        return out
    # A view shares its base's version counter, so it must be an inference tensor exactly when the
    # base is one (a view made in inference mode of a normal tensor is a normal tensor).
    base = args[0] if args and isinstance(args[0], torch.Tensor) else None
    inference = base.is_inference() if _is_view(func) and base is not None else torch.is_inference_mode_enabled()
    with torch.inference_mode(inference):
        return tree_map(lambda t: OnGPU(t) if isinstance(t, torch.Tensor) and not isinstance(t, OnGPU) else t, out)


def _is_view(func: Any) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class _Dispatch(TorchDispatchMode):
    """Sees the operations on plain tensors too: factories and copies that target the GPU."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _run(func, args, kwargs or {})


class _Constructors(TorchFunctionMode):
    """``torch.tensor(data, device=GPU)`` builds its tensor outside the dispatcher: build it on
    the CPU and move it."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and _is_gpu_device(kwargs.get("device")):
            return OnGPU(func(*args, **dict(kwargs, device=CPU)))
        return func(*args, **kwargs)


@contextmanager
def fake_gpu() -> Iterator[torch.device]:
    """Within: ``GPU`` is a second device that keeps values and fails loudly on mixing."""
    with _Constructors(), _Dispatch():
        yield GPU


def on_gpu(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == GPU.type


def module_device_types(module: torch.nn.Module) -> set[str]:
    """``{"cpu"}``, ``{"meta"}`` or both: where a module's parameters and buffers are."""
    return {t.device.type for t in (*module.parameters(), *module.buffers())}
