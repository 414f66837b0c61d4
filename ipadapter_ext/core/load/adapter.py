"""A loaded IP-Adapter: projection module plus per-layer ``to_k_ip``/``to_v_ip`` weights.

SD adapters' K/V projections have no bias; XLabs' Flux adapters (one K/V pair per double-stream
block) have one, so the biases are optional and ``layer_kv`` adds them when present. InstantX's
Flux adapter has one pair per double and single block, no bias, and an RMS norm on each head of
its keys (applied in ``layer_kv``, once per generation). Flux Redux has no K/V at all: its
projection makes context tokens.

Loading (files, detection) is kept apart from the math: :meth:`IPAdapterModel.from_tensors`
takes already-read tensors, so tests and the API's embeds path share the exact code that runs in
the WebUI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attend.flux import rms_norm_heads
from ..attend.lora import FaceIDLoRA
from ..encode.encoder import ClipVisionEncoder, ImageEncoder
from ..errors import ModelFileError
from ..project.projections import EncodedImages, Projection, build_projection
from .adapter_info import AdapterInfo
from .detect import detect_adapter
from .formats import AdapterTensors, load_adapter_tensors


class IPAdapterModel:
    """Never changed by use, so one instance serves several units and generations; only
    :meth:`to` moves its projection (in place)."""

    def __init__(
        self,
        info: AdapterInfo,
        projection: Projection,
        to_k: list[torch.Tensor],
        to_v: list[torch.Tensor],
        name: str = "adapter",
        lora: FaceIDLoRA | None = None,
        to_k_bias: list[torch.Tensor] | None = None,
        to_v_bias: list[torch.Tensor] | None = None,
    ) -> None:
        self.info = info
        self.projection = projection
        self.to_k = to_k
        self.to_v = to_v
        self.name = name
        #: FaceID's own LoRA on every attention layer (``None`` for other adapters and Portrait).
        self.lora = lora
        self.to_k_bias = to_k_bias
        self.to_v_bias = to_v_bias

    @classmethod
    def from_tensors(
        cls, tensors: AdapterTensors, filename: str = "adapter", override: str | None = None
    ) -> IPAdapterModel:
        info = detect_adapter(tensors.shapes(), filename, override)
        projection = build_projection(info, tensors.image_proj, filename)
        if info.variant == "flux-redux":  # context tokens only
            return cls(info, projection, [], [], Path(filename).stem)
        if info.variant == "instantx-flux":  # one K/V Linear without bias per block, numbered from 0
            kv = tensors.ip_adapter
            to_k = [kv[f"{n}.to_k_ip.weight"] for n in range(info.num_layers)]
            to_v = [kv[f"{n}.to_v_ip.weight"] for n in range(info.num_layers)]
            return cls(info, projection, to_k, to_v, Path(filename).stem)
        if info.arch == "flux":  # one K/V Linear with bias per double block, numbered from 0
            kv = tensors.ip_adapter
            keys = range(info.num_layers)
            to_k, to_v = [kv[f"{n}.to_k_ip.weight"] for n in keys], [kv[f"{n}.to_v_ip.weight"] for n in keys]
            bias_k, bias_v = [kv[f"{n}.to_k_ip.bias"] for n in keys], [kv[f"{n}.to_v_ip.bias"] for n in keys]
            return cls(info, projection, to_k, to_v, Path(filename).stem, to_k_bias=bias_k, to_v_bias=bias_v)
        to_k = [tensors.ip_adapter[f"{2 * n + 1}.to_k_ip.weight"] for n in range(info.num_layers)]
        to_v = [tensors.ip_adapter[f"{2 * n + 1}.to_v_ip.weight"] for n in range(info.num_layers)]
        lora = FaceIDLoRA.from_ip_adapter(tensors.ip_adapter, filename) if info.has_lora else None
        if lora is not None and lora.num_blocks != info.num_layers:
            raise ModelFileError(
                f"{filename}: the FaceID LoRA covers {lora.num_blocks} transformer blocks but the adapter has "
                f"{info.num_layers} layers. The file is damaged: download it again."
            )
        return cls(info, projection, to_k, to_v, Path(filename).stem, lora=lora)

    @classmethod
    def from_file(cls, path: str | Path, override: str | None = None) -> IPAdapterModel:
        path = Path(path)
        return cls.from_tensors(load_adapter_tensors(path), path.name, override)

    def to(self, device: torch.device | str) -> IPAdapterModel:
        """Move the projection (small, fp32 for accuracy) to ``device``. The K/V weights stay where
        they were loaded (CPU): they are needed once per generation, layer by layer, in
        :meth:`layer_kv`, so they never occupy accelerator memory between generations."""
        self.projection.to(device)
        return self

    @torch.inference_mode()
    def project(self, enc: EncodedImages, shortcut_scale: float = 1.0) -> torch.Tensor:
        """Encoder outputs for N images → [N, T, ctx] image tokens (fp32)."""
        device = next(self.projection.parameters()).device
        return self.projection(enc.map(lambda t: t.to(device, torch.float32)), shortcut_scale=shortcut_scale)

    @staticmethod
    def uncond_inputs(enc: EncodedImages, encoder: ClipVisionEncoder | None) -> EncodedImages:
        """The negative inputs of the original repository: zero image embeds, zero face
        embeddings, and the encoder's hidden states for a zero normalised image."""
        hidden = None
        if enc.hidden is not None:
            if encoder is None:
                raise ValueError("uncond hidden states need the encoder that produced the cond ones")
            hidden = encoder.uncond_hidden().to(enc.hidden.device).expand(enc.hidden.shape[0], -1, -1)
        return EncodedImages(
            image_embeds=None if enc.image_embeds is None else torch.zeros_like(enc.image_embeds),
            hidden=hidden,
            face=None if enc.face is None else torch.zeros_like(enc.face),
        )

    def negative_inputs(self, enc: EncodedImages, encoder: ImageEncoder | None) -> EncodedImages:
        """The encoder inputs of the uncond tokens, as the adapter's authors build them: for
        XLabs' Flux adapters (x-flux, and diffusers' Flux pipeline) the CLIP image embeds of an
        all-black picture, one per reference (InstantX's pipeline has no true CFG: its units take
        the same, SigLIP's pooled output of a black picture); for SD adapters :meth:`uncond_inputs`."""
        if self.info.arch != "flux":
            return self.uncond_inputs(enc, encoder)
        if encoder is None:
            raise ValueError("a Flux adapter's uncond tokens need the encoder that produced the cond ones")
        embeds = enc.require("image_embeds")
        black = encoder.black_image_embeds().to(embeds.device, embeds.dtype)
        return EncodedImages(image_embeds=black.expand(embeds.shape[0], -1))

    def cond_uncond_tokens(
        self, enc: EncodedImages, encoder: ImageEncoder | None, shortcut_scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([1, N·T, ctx], [1, N·T, ctx]): all references' tokens concatenated, and the uncond."""
        cond = self.project(enc, shortcut_scale)
        uncond = self.project(self.negative_inputs(enc, encoder), shortcut_scale)
        return cond.reshape(1, -1, cond.shape[-1]), uncond.reshape(1, -1, uncond.shape[-1])

    @property
    def normalises_keys(self) -> bool:
        """InstantX: its keys are RMS-normalised per head (``norm_added_k``)."""
        return self.info.variant == "instantx-flux"

    @torch.inference_mode()
    def layer_kv(
        self,
        tokens: torch.Tensor,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        layers: Sequence[int] | None = None,
        head_dim: int = 0,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (every layer, or those in ``layers``), ``(tokens · W_kᵀ [+ b_k], tokens · W_vᵀ
        [+ b_v])`` on ``device`` in ``dtype`` (default: the weights'). Each weight visits the device
        only for its own product. For InstantX the keys are then RMS-normalised over each head of
        ``head_dim`` (the transformer's), in fp32 before the cast to ``dtype``."""
        if self.normalises_keys and head_dim <= 0:
            raise ValueError(f"{self.name}: its keys are normalised per head; the transformer's head width is needed")
        out = []
        n = len(self.to_k)
        bias_k = self.to_k_bias or [None] * n
        bias_v = self.to_v_bias or [None] * n
        chosen = range(n) if layers is None else layers
        for wk, wv, bk, bv in ((self.to_k[i], self.to_v[i], bias_k[i], bias_v[i]) for i in chosen):
            wk = wk.to(device=device or wk.device, dtype=dtype or wk.dtype)
            wv = wv.to(device=device or wv.device, dtype=dtype or wv.dtype)
            bk = None if bk is None else bk.to(device=wk.device, dtype=wk.dtype)
            bv = None if bv is None else bv.to(device=wv.device, dtype=wv.dtype)
            t = tokens.to(device=wk.device, dtype=wk.dtype)
            k, v = F.linear(t, wk, bk), F.linear(t, wv, bv)
            if self.normalises_keys:
                k = rms_norm_heads(k, head_dim)
            out.append((k, v))
        return out
