"""Doubles of Forge's UNet patcher contract, in behaviour, from lllyasviel/stable-diffusion-webui-forge
at dfdcbab6 (own implementations, no Forge code):

* ``backend/patcher/unet.py`` + ``backend/patcher/base.py``: ``UnetPatcher`` with ``clone()``
  (new object, ``model_options`` deep-copied, extra module list copied), ``model_options`` with
  ``transformer_options["patches_replace"]["attn2"][key]`` written copy-on-write by
  ``set_model_attn2_replace(patch, block_name, number, transformer_index=None)`` (key
  ``(block, number)`` or ``(block, number, transformer_index)``), and
  ``add_extra_torch_module_during_sampling(m, cast_to_unet_dtype=True)`` and
  ``add_extra_preserved_memory_during_sampling(bytes)`` (both copied by ``clone()``); the object-patch
  contract: ``add_object_patch(name, obj)`` (attribute path under the patcher's model; ``clone()``
  copies the dict shallowly), ``get_model_object(name)`` (the patch, else the backup, else the
  attribute), ``forge_patch_model()`` (backs up each attribute once, sets the patches),
  ``forge_unpatch_model()`` (restores the backups), ``is_clone(other)`` (same model object);
  ``set_model_unet_function_wrapper(f)`` (``model_options["model_function_wrapper"]``) and
  ``model_patches_to(device)`` (calls ``.to(device)`` on that wrapper when it has one).
* ``backend/modules/k_prediction.py``: a discrete-sigma ``predictor`` with
  ``percent_to_sigma`` (≤0 → a huge sigma, ≥1 → 0, else the sigma at timestep (1−p)·999).
* ``backend/nn/unet.py``: ``forge_unet_forward`` runs an LDM UNet the way Forge's
  ``IntegratedUNet2DConditionModel.forward`` does: ``transformer_options`` gets
  ``original_shape`` and ``transformer_index`` (execution-order SpatialTransformer count), ``block``
  = ``("input", i)`` / ``("middle", 0)`` / ``("output", i)``, ``block_index`` = depth index; each
  transformer block builds ``extra_options`` (all transformer options but the patch tables, plus
  ``n_heads``/``dim_head``), looks up the attn2 replace patch by the long key, then the short one,
  and if found calls ``patch(to_q(n), to_k(ctx), to_v(ctx), extra_options)`` and ``to_out`` on the
  result; otherwise ``CrossAttention.forward`` runs (to_q/k/v, ``attention_function``, to_out).

The UNet modules are the WebUI's ``ldm`` ones (sdkit), which Forge's UNet mirrors layer for layer;
they are imported where the UNet runs, so the patcher doubles serve Flux tests without ``ldm``.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.model_options = {"transformer_options": {}}
        self.object_patches = {}
        self.object_patches_backup = {}

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return _get_attr(self.model, name)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def model_patches_to(self, device):
        wrapper = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def forge_patch_model(self, target_device=None):
        for name, obj in self.object_patches.items():
            if name not in self.object_patches_backup:
                self.object_patches_backup[name] = _get_attr(self.model, name)
            _set_attr(self.model, name, obj)
        return self.model

    def forge_unpatch_model(self, target_device=None):
        for name, obj in self.object_patches_backup.items():
            _set_attr(self.model, name, obj)
        self.object_patches_backup = {}


def _get_attr(obj, name):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(obj, name, value):
    *parents, last = name.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


class UnetPatcher(ModelPatcher):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_model_patchers_during_sampling = []
        self.extra_preserved_memory_during_sampling = 0

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device)
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.extra_model_patchers_during_sampling = list(self.extra_model_patchers_during_sampling)
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes):
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        options = dict(self.model_options["transformer_options"])
        tables = dict(options.get("patches_replace", {}))
        table = dict(tables.get("attn2", {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        table[key] = patch
        tables["attn2"] = table
        options["patches_replace"] = tables
        self.model_options["transformer_options"] = options

    def add_extra_torch_module_during_sampling(self, m, cast_to_unet_dtype=True):
        if cast_to_unet_dtype:
            m.to(self.model.diffusion_model.dtype)
        patcher = ModelPatcher(m, self.load_device, self.offload_device)
        self.extra_model_patchers_during_sampling.append(patcher)
        return patcher

    def attn2_table(self):
        return self.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


class Predictor:
    """Discrete sigmas of SD's scaled-linear schedule (1000 timesteps)."""

    def __init__(self):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - alphas) / alphas) ** 0.5

    def sigma(self, t: float) -> float:
        lo = int(t)
        hi = min(lo + 1, 999)
        w = t - lo
        return float(torch.exp((1 - w) * self.sigmas[lo].log() + w * self.sigmas[hi].log()))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * 999.0)


def unet_patcher(unet, load_device=None) -> UnetPatcher:
    """A UNet patcher as Forge's loader makes it: loaded to ``load_device`` (default the CPU, or
    the device of the modules double) when sampling starts, offloaded to the CPU."""
    from modules import devices

    model = SimpleNamespace(diffusion_model=unet, predictor=Predictor(), computation_dtype=torch.float32)
    device = load_device if load_device is not None else devices.device
    return UnetPatcher(model, load_device=torch.device(device), offload_device=torch.device("cpu"))


def forge_unet_forward(unet, x, timesteps, context, transformer_options, block=None):
    """``block``: the transformer block's forward (``_transformer_block``, Forge's); Forge 1's
    double (forge1_patcher.py) passes ``ldm_patched``'s, over the same traversal."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    to = transformer_options
    block = block or _transformer_block
    to["original_shape"] = list(x.shape)
    to["transformer_index"] = 0
    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(x.dtype))
    hs, h = [], x
    for i, module in enumerate(unet.input_blocks):
        to["block"] = ("input", i)
        h = _sequential(module, h, emb, context, to, block)
        hs.append(h)
    to["block"] = ("middle", 0)
    h = _sequential(unet.middle_block, h, emb, context, to, block)
    for i, module in enumerate(unet.output_blocks):
        to["block"] = ("output", i)
        h = _sequential(module, torch.cat([h, hs.pop()], dim=1), emb, context, to, block)
    return unet.out(h)


def _sequential(seq, x, emb, context, to, block):
    from ldm.modules.attention import SpatialTransformer
    from ldm.modules.diffusionmodules.openaimodel import TimestepBlock

    for layer in seq:
        if isinstance(layer, TimestepBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = _spatial_transformer(layer, x, context, to, block)
            to["transformer_index"] += 1
        else:
            x = layer(x)
    return x


def _spatial_transformer(st, x, context, to, block):
    b, _, h, w = x.shape
    x_in = x
    x = st.norm(x)
    if not st.use_linear:
        x = st.proj_in(x)
    x = x.flatten(2).transpose(1, 2).contiguous()
    if st.use_linear:
        x = st.proj_in(x)
    for i, transformer in enumerate(st.transformer_blocks):
        to["block_index"] = i
        x = block(transformer, x, context, to)
    if st.use_linear:
        x = st.proj_out(x)
    x = x.transpose(1, 2).reshape(b, -1, h, w).contiguous()
    if not st.use_linear:
        x = st.proj_out(x)
    return x + x_in


def _transformer_block(block, x, context, to):
    extra = {k: v for k, v in to.items() if k not in ("patches", "patches_replace")}
    attn2 = block.attn2
    extra["n_heads"] = attn2.heads
    extra["dim_head"] = attn2.to_q.out_features // attn2.heads
    where = to.get("block")
    long_key = (where[0], where[1], to.get("block_index", 0)) if where is not None else None
    n = block.norm1(x)
    x = _cross_attention(block.attn1, n, context if block.disable_self_attn else n) + x
    n = block.norm2(x)
    table = to.get("patches_replace", {}).get("attn2", {})
    key = long_key if long_key in table else where
    if key in table:
        n = table[key](attn2.to_q(n), attn2.to_k(context), attn2.to_v(context), extra)
        n = attn2.to_out(n)
    else:
        n = _cross_attention(attn2, n, context)
    x = n + x
    return block.ff(block.norm3(x)) + x


def _cross_attention(attn, x, context):
    """Forge's ``CrossAttention.forward``: projections, then ``attention_function``, then ``to_out``."""
    from backend.attention import attention_function

    return attn.to_out(attention_function(attn.to_q(x), attn.to_k(context), attn.to_v(context), attn.heads))
