"""Doubles of the Forge 1 family's UNet patcher contract, in behaviour (own implementations, no host
code), from Panchovix/stable-diffusion-webui-reForge main at 3b56b268 and, where it differs,
Haoming02/sd-webui-forge-classic ``classic`` at 1f95d717:

* ``ldm_patched/modules/model_patcher.py`` ``ModelPatcher``: ``model_options`` with
  ``transformer_options["patches_replace"]["attn2"][key]``, written copy-on-write by
  ``set_model_attn2_replace(patch, block_name, number, transformer_index=None)`` through
  ``set_model_options_patch_replace`` (key ``(block, number)`` or ``(block, number, index)``;
  Classic writes the nested dicts in place, which a fresh clone's deep copy makes equivalent);
  ``clone()`` (new object of the same class, ``model_options`` deep-copied, ``object_patches``
  copied shallowly, ``object_patches_backup`` shared, ``parent`` = the original);
  ``add_object_patch``; ``get_model_object(name)`` (reForge only: the patch, else the backup,
  else the attribute); ``model_patches_to(device)`` (``.to(device)`` on every replace patch that
  has one).
* ``modules_forge/unet_patcher.py`` ``UnetPatcher``: ``clone()`` also copies the list
  ``extra_model_patchers_during_sampling``; ``add_extra_torch_module_during_sampling(m,
  cast_to_unet_dtype=True)`` wraps ``m`` in a ``ModelPatcher`` appended to that list;
  ``extra_preserved_memory_during_sampling`` (copied by ``clone()``) grows by
  ``add_extra_preserved_memory_during_sampling(bytes)``.
* ``ldm_patched/modules/model_base.py`` ``BaseModel``: ``diffusion_model``, ``model_sampling``,
  ``manual_cast_dtype`` (the compute dtype when weights are cast), ``get_dtype()`` (the UNet's).
  No ``predictor``, no ``computation_dtype`` (those are Forge 2's).
* ``ldm_patched/modules/model_sampling.py`` ``ModelSamplingDiscrete``: SD's scaled-linear schedule
  of 1000 steps, ``sigma(timestep)`` interpolating log-sigmas, ``percent_to_sigma`` (≤0 → a huge
  sigma, ≥1 → 0, else the sigma at timestep (1−p)·999).
* ``ldm_patched/ldm/modules/attention.py`` ``BasicTransformerBlock.forward`` (:func:`ldm_patched_block`):
  ``extra_options`` = every transformer option but the patch tables, plus ``n_heads``, ``dim_head``
  and (reForge) ``attn_precision``; the attn2 replace patch looked up by the long key, then the
  short one, called as ``patch(to_q(n), to_k(ctx), to_v(ctx), extra_options)`` before ``to_out``;
  otherwise ``CrossAttention.forward``: ``to_out(optimized_attention(q, k, v, heads,
  attn_precision=…))`` (Classic: no ``attn_precision``). The traversal of
  ``ldm_patched/ldm/modules/diffusionmodules/openaimodel.py`` (``original_shape``,
  ``transformer_index``, ``block``, ``block_index``) is Forge 2's, shared with forge_backend.py.

The UNet modules are the WebUI's ``ldm`` ones (sdkit), which ``ldm_patched``'s UNet mirrors layer for
layer; the blocks' ``attn_precision`` is an attribute a test may set (reForge takes it from the
model config: ``None``, or float32 for upcast models).
"""

from __future__ import annotations

import copy

import torch

from tests.doubles.forge_backend import _get_attr, forge_unet_forward


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.size = size
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.parent = None

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.object_patches_backup = self.object_patches_backup
        n.parent = self
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        to = self.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to["patches_replace"][name][key] = patch
        self.model_options["transformer_options"] = to

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return _get_attr(self.model, name)

    def model_patches_to(self, device):
        table = self.model_options["transformer_options"].get("patches_replace", {})
        for patches in table.values():
            for key, patch in patches.items():
                if hasattr(patch, "to"):
                    patches[key] = patch.to(device)

    def model_dtype(self):
        return self.model.get_dtype()

    def attn2_table(self):
        return self.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_model_patchers_during_sampling = []
        self.extra_preserved_memory_during_sampling = 0

    def clone(self):
        n = super().clone()
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes):
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_torch_module_during_sampling(self, m, cast_to_unet_dtype=True):
        if cast_to_unet_dtype:
            m.to(self.model.diffusion_model.dtype)
        patcher = ModelPatcher(m, self.load_device, self.offload_device)
        self.extra_model_patchers_during_sampling.append(patcher)
        return patcher


class ModelSamplingDiscrete:
    """SD's scaled-linear schedule, 1000 timesteps (float32 sigmas, as ``set_sigmas`` keeps them)."""

    def __init__(self):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        self.sigmas = (((1 - alphas) / alphas) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class BaseModel:
    def __init__(self, unet, manual_cast_dtype=None):
        self.diffusion_model = unet
        self.model_sampling = ModelSamplingDiscrete()
        self.manual_cast_dtype = manual_cast_dtype

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype


def unet_patcher(unet, manual_cast_dtype=None) -> UnetPatcher:
    return UnetPatcher(BaseModel(unet, manual_cast_dtype), torch.device("cpu"), torch.device("cpu"))


def ldm_patched_block(precision_argument: bool = True):
    """``BasicTransformerBlock.forward`` of reForge (``precision_argument``) or Forge Classic."""

    def kernel(q, k, v, heads, precision):
        from ldm_patched.ldm.modules import attention

        if precision_argument:
            return attention.optimized_attention(q, k, v, heads, attn_precision=precision)
        return attention.optimized_attention(q, k, v, heads)

    def cross_attention(attn, x, context, precision):
        return attn.to_out(kernel(attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads, precision))

    def block_forward(block, x, context, to):
        precision = getattr(block, "attn_precision", None)
        extra = {k: v for k, v in to.items() if k not in ("patches", "patches_replace")}
        attn2 = block.attn2
        extra["n_heads"] = attn2.heads
        extra["dim_head"] = attn2.to_q.out_features // attn2.heads
        if precision_argument:
            extra["attn_precision"] = precision
        where = to.get("block")
        long_key = (where[0], where[1], to.get("block_index", 0)) if where is not None else None
        n = block.norm1(x)
        x = cross_attention(block.attn1, n, context if block.disable_self_attn else n, precision) + x
        n = block.norm2(x)
        table = to.get("patches_replace", {}).get("attn2", {})
        key = long_key if long_key in table else where
        if key in table:
            n = attn2.to_out(table[key](attn2.to_q(n), attn2.to_k(context), attn2.to_v(context), extra))
        else:
            n = cross_attention(attn2, n, context, precision)
        x = n + x
        return block.ff(block.norm3(x)) + x

    return block_forward


def forge1_unet_forward(precision_argument: bool = True):
    """The UNet's forward as ``ldm_patched`` runs it, for the sampling double (forge_sampling.py)."""
    block = ldm_patched_block(precision_argument)

    def forward(unet, x, timesteps, context, transformer_options):
        return forge_unet_forward(unet, x, timesteps, context, transformer_options, block=block)

    return forward


__all__ = ["ModelPatcher", "UnetPatcher", "forge1_unet_forward", "ldm_patched_block", "unet_patcher"]
