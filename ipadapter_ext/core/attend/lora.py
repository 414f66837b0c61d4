"""The LoRA that FaceID adapters carry for every attention layer, applied with removable hooks.

FaceID, FaceID-Plus and Plus v2 were trained together with a rank-128 LoRA on the UNet's
self- *and* cross-attention projections; the adapter file stores it in its ``ip_adapter`` dict as
``"{N}.to_{q,k,v,out}_lora.{down,up}.weight"`` with N in diffusers' processor order: ``2n`` is
``attn1`` and ``2n+1`` is ``attn2`` of the same transformer block (n = the adapter layer index the
``to_k_ip`` keys use). Without it the identity transfer is much weaker.

The original applies it as ``to_q(x) + s·up(down(x))`` (no ``network_alpha``; ``to_out`` means
``to_out[0]``). Here a forward hook on each of the four Linear modules returns
``output + s·up(down(input))``:

* hooks compose with whatever else changes the module: the host's own LoRA patching weights
  (Forge, A1111) or replacing ``Linear.forward`` (A1111's Lora extension), other extensions' hooks;
* removing the handles restores the module bit for bit, since nothing of it was touched;
* the hooks run first among the module's forward hooks (``prepend``), so any observer of the output
  (our own ``Attn2Hooks`` keeping the query) sees the adapted value, as in the original, where
  text and image attention share the LoRA'd query;
* several units add their own hooks, so their LoRAs sum, each with its own strength.

The weights are cast to the input's device and dtype once per (device, dtype) while attached,
not per call, and dropped on removal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import IncompatibleModelError, ModelFileError
from .hooks import output_linear
from .layers import map_ldm_attn2

#: The four projections of an attention module, in the original's key names.
PROJECTIONS = ("q", "k", "v", "out")
_KEY = re.compile(r"^(\d+)\.to_(q|k|v|out)_lora\.(down|up)\.weight$")


@dataclass(frozen=True)
class LoRAPair:
    """``up @ down`` is the low-rank update of one Linear: ``down`` [rank, in], ``up`` [out, rank]."""

    down: torch.Tensor
    up: torch.Tensor

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])


@dataclass(frozen=True)
class FaceIDLoRA:
    """An adapter's LoRA: ``layers[N][proj]`` for key index N (even: attn1, odd: attn2).

    Immutable and never moved: one instance serves every unit and generation using the adapter.
    """

    layers: tuple[Mapping[str, LoRAPair], ...]
    rank: int

    @property
    def num_blocks(self) -> int:
        """Transformer blocks covered: one (attn1, attn2) pair each, as many as adapter layers."""
        return len(self.layers) // 2

    @classmethod
    def from_ip_adapter(cls, ip_adapter: Mapping[str, torch.Tensor], filename: str = "adapter") -> FaceIDLoRA | None:
        """Parse the ``*_lora`` keys of an ``ip_adapter`` dict (prefix removed); ``None`` if it has none.

        Every index 0 … 2L−1 must carry all eight tensors with consistent 2-D shapes: a partial LoRA
        would silently change some layers and not others.
        """
        found: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        for key, value in ip_adapter.items():
            m = _KEY.match(key)
            if m:
                found.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {})[m.group(3)] = value
        if not found:
            return None
        indices = sorted(found)
        if indices != list(range(len(indices))) or len(indices) % 2:
            raise ModelFileError(
                f"{filename}: the FaceID LoRA keys do not cover the attention layers 0 … 2L−1 in pairs "
                f"(found indices {indices[:6]}… of {len(indices)}). The file is damaged: download it again."
            )
        ranks: set[int] = set()
        layers = []
        for n in indices:
            pairs = {}
            for proj in PROJECTIONS:
                parts = found[n].get(proj, {})
                down, up = parts.get("down"), parts.get("up")
                if down is None or up is None:
                    missing = "down" if down is None else "up"
                    raise ModelFileError(
                        f"{filename}: the FaceID LoRA lacks '{n}.to_{proj}_lora.{missing}.weight'. "
                        "The file is damaged or incompletely converted: download it again."
                    )
                if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
                    raise ModelFileError(
                        f"{filename}: the FaceID LoRA of layer {n} to_{proj} has down {tuple(down.shape)} and up "
                        f"{tuple(up.shape)}; expected [rank, in] and [out, rank]. The file is damaged."
                    )
                ranks.add(int(down.shape[0]))
                pairs[proj] = LoRAPair(down, up)
            layers.append(pairs)
        if len(ranks) != 1:
            raise ModelFileError(f"{filename}: the FaceID LoRA layers disagree on their rank ({sorted(ranks)}).")
        return cls(tuple(layers), ranks.pop())

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of the weights once cast to ``dtype``: what attaching puts next to the UNet."""
        size = torch.empty((), dtype=dtype).element_size()
        return size * sum(pair.down.numel() + pair.up.numel() for layer in self.layers for pair in layer.values())

    def attach(self, attention: Sequence[tuple[nn.Module, nn.Module]], strength: float) -> LoRAHooks:
        """Hook ``attention`` — (attn1, attn2) per transformer block, in adapter key order — and
        return the installed hooks; call :meth:`LoRAHooks.remove` (in a ``finally``) to undo."""
        return LoRAHooks(self, attention, strength).install()


def _targets(attn: nn.Module) -> dict[str, nn.Module]:
    return {"q": attn.to_q, "k": attn.to_k, "v": attn.to_v, "out": output_linear(attn)}


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear-like module, or ``None`` if it does not say. Only the attributes are
    trusted: Forge's quantised Linears (bnb, GGUF) store packed weights whose shape is not (out, in)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    return None


class _Delta:
    """One Linear's update ``s·up(down(x))``; the cast weights are cached per (device, dtype)."""

    def __init__(self, pair: LoRAPair, strength: float) -> None:
        self.pair = pair
        self.strength = strength
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def weights(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        cast = self._cast.get(key)
        if cast is None:
            # Strength folded into ``up`` here, once, rather than one more multiply per call.
            down = self.pair.down.to(device=like.device, dtype=like.dtype)
            up = (self.pair.up.to(device=like.device, dtype=torch.float32) * self.strength).to(like.dtype)
            cast = self._cast[key] = (down, up)
        return cast

    def __call__(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        down, up = self.weights(x)
        delta = F.linear(F.linear(x, down), up)
        return output + delta.to(output.dtype)

    def clear(self) -> None:
        self._cast.clear()


class LoRAHooks:
    """One unit's FaceID LoRA on one UNet for one generation; a context manager.

    ``attention[n]`` is the (attn1, attn2) pair of the transformer block of adapter layer n. A
    strength of 0 installs nothing, so the UNet's output stays bit-identical.
    """

    def __init__(self, lora: FaceIDLoRA, attention: Sequence[tuple[nn.Module, nn.Module]], strength: float) -> None:
        if len(attention) != lora.num_blocks:
            raise IncompatibleModelError(
                f"the FaceID LoRA covers {lora.num_blocks} transformer blocks but the UNet has {len(attention)}. "
                "The adapter was made for another base model family (SD1.5 vs SDXL): pick the matching file."
            )
        self.lora = lora
        self.strength = float(strength)
        self._plan: list[tuple[nn.Module, _Delta]] = []
        for n, pair in enumerate(attention):
            for which, attn in enumerate(pair):
                index = 2 * n + which
                for proj, module in _targets(attn).items():
                    lora_pair = lora.layers[index][proj]
                    _check(module, lora_pair, index, proj)
                    self._plan.append((module, _Delta(lora_pair, self.strength)))
        self._handles: list[RemovableHandle] = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def install(self) -> LoRAHooks:
        if self._handles or self.strength == 0:
            return self
        try:
            for module, delta in self._plan:
                self._handles.append(module.register_forward_hook(delta, prepend=True))
        except Exception:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Idempotent; safe in ``finally`` blocks. Drops the cast weights too."""
        while self._handles:
            self._handles.pop().remove()
        for _module, delta in self._plan:
            delta.clear()

    def __enter__(self) -> LoRAHooks:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _check(module: nn.Module, pair: LoRAPair, index: int, proj: str) -> None:
    features = _features(module)
    if features is not None and features != (pair.in_features, pair.out_features):
        kind = "self" if index % 2 == 0 else "cross"
        raise IncompatibleModelError(
            f"the FaceID LoRA of layer {index} ({kind}-attention to_{proj}) maps {pair.in_features} → "
            f"{pair.out_features} features but the UNet's module maps {features[0]} → {features[1]}. "
            "The adapter does not fit this base model: pick the SD1.5 or SDXL file that matches the checkpoint."
        )


def ldm_attention_pairs(named_modules: Iterable[tuple[str, nn.Module]]) -> list[tuple[nn.Module, nn.Module]]:
    """(attn1, attn2) of every transformer block of an LDM UNet (A1111 ldm/sgm, Forge), in adapter
    key order. ``named_modules`` is ``unet.named_modules()`` (any name prefix)."""
    modules = dict(named_modules)
    attn2 = [name for name in modules if name.endswith("attn2")]
    pairs = []
    for slot in map_ldm_attn2(attn2):
        sibling = slot.name[: -len("attn2")] + "attn1"
        if sibling not in modules:
            raise IncompatibleModelError(
                f"the UNet's transformer block '{slot.name[: -len('.attn2')]}' has no self-attention 'attn1', so "
                "the FaceID LoRA cannot be applied to it."
            )
        pairs.append((modules[sibling], modules[slot.name]))
    return pairs
