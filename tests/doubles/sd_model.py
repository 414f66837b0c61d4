"""Double of the model object A1111 1.10.1 samples with (``shared.sd_model``: ldm's
``LatentDiffusion`` for SD1.5, sgm's ``DiffusionEngine`` for SDXL, as ``modules/sd_models.py``
builds and extends them), reduced to the parts the extension and ``modules/lowvram.py`` touch:

* ``model``: the UNet wrapper (ldm ``DiffusionWrapper`` / sgm ``OpenAIWrapper``) holding
  ``diffusion_model``; the sampler calls the *wrapper* (``apply_model`` → ``self.model(x, t,
  **cond)``), which is where --medvram's pre-hook sits;
* the text encoder: ``cond_stage_model.transformer`` (SD1.5) or ``conditioner`` (SDXL; its presence
  is how A1111 tells SDXL apart, ``--medvram-sdxl`` included);
* ``first_stage_model`` with ``encode``/``decode`` (the VAE; lowvram wraps those two);
* ``is_sdxl``/``is_sd2``, ``lowvram``, ``sd_checkpoint_info``, ``sd_model_checkpoint``,
  ``used_config``.

The UNet is the WebUI's own ``ldm`` UNetModel. The text encoder and the VAE are stand-ins that
keep their input's values (a weight of exactly 1): their job here is to be moved by lowvram, run
on the device, and leave the UNet on the CPU between passes as the real ones do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class DiffusionWrapper(nn.Module):
    """ldm's ``DiffusionWrapper`` (crossattn conditioning) / sgm's ``OpenAIWrapper``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_crossattn: list | None = None, **_: Any) -> torch.Tensor:
        return self.diffusion_model(x, t, context=torch.cat(c_crossattn, 1))


class _Passthrough(nn.Module):
    """A part that is moved like a real one: output = input × its weight (exactly 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class TextEncoder(nn.Module):
    """SD1.5's ``cond_stage_model`` (``FrozenCLIPEmbedderWithCustomWords``): the transformer
    inside it is what lowvram hooks, with the wrapper as its parent."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = _Passthrough()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens)


class Conditioner(nn.Module):
    """SDXL's ``conditioner`` (sgm ``GeneralConditioner``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedders = nn.ModuleList([_Passthrough()])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedders[0](tokens)


class FirstStage(nn.Module):
    """The VAE: called through ``encode``/``decode``, never ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()), requires_grad=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.weight


@dataclass(eq=False)
class CheckpointInfo:
    """``sd_models.CheckpointInfo``: a file; here a recipe for its weights and its config."""

    title: str
    config: str  # the model config file A1111 would pick (same config: weights reloaded in place)
    build_unet: Any  # () -> a fresh ldm UNetModel with this checkpoint's weights
    sdxl: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"/models/Stable-diffusion/{self.title}.safetensors"

    @property
    def short_title(self) -> str:
        return self.title


class SDModel(nn.Module):
    def __init__(self, unet: nn.Module, sdxl: bool = False, info: CheckpointInfo | None = None) -> None:
        super().__init__()
        self.model = DiffusionWrapper(unet)
        if sdxl:
            self.conditioner = Conditioner()
        else:
            self.cond_stage_model = TextEncoder()
        self.first_stage_model = FirstStage()
        self.is_sdxl, self.is_sd2, self.is_sd1 = sdxl, False, not sdxl
        self.lowvram = False
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename if info is not None else None
        self.used_config = info.config if info is not None else ("sd_xl_base.yaml" if sdxl else "v1-inference.yaml")

    @property
    def context_dim(self) -> int:
        unet = self.model.diffusion_model
        return next(m for n, m in unet.named_modules() if n.endswith("attn2")).to_k.in_features

    def get_learned_conditioning(self, tokens: torch.Tensor) -> torch.Tensor:
        """The text encoder's output for ``tokens`` (here already embeddings), on the device."""
        from modules import devices

        encoder = self.conditioner if self.is_sdxl else self.cond_stage_model
        return encoder(tokens.to(devices.device))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, c_crossattn=[context])

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model.decode(z)
