"""Double of sd-webui-controlnet's hooking patterns (Mikubill/sd-webui-controlnet v1.1.455).

Mirrors, in behaviour (not code):

* ``scripts/hook.py`` ``UnetHook.hook``/``restore``: the UNet's ``forward`` is saved as
  ``_original_forward`` and replaced per instance by a wrapper that runs the control model on the
  same ``x`` and text ``context`` and adds its residual; ``restore`` puts the saved attribute back
  and deletes ``_original_forward``.
* ``scripts/ipadapter/plugable_ipadapter.py`` ``hack_blk``/``attn_forward_hacked``/
  ``clear_all_ip_adapter``: each attn2's current ``forward`` is saved in a dict and replaced per
  instance by a forward that computes the text attention with SDPA from ``self.to_q/to_k/to_v``,
  adds every function in ``self.ipadapter_hacks`` (called as ``f(self, x, q)`` with q split into
  heads), and returns ``self.to_out(out)``; clearing sets each saved ``forward`` back and empties
  ``ipadapter_hacks``.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from ldm.modules.attention import CrossAttention


def _attn_forward_hacked(self, x, context=None, **kwargs):
    b = x.shape[0]
    heads, d = self.heads, x.shape[-1] // self.heads
    context = x if context is None else context
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, heads * d)
    for f in self.ipadapter_hacks:
        out = out + f(self, x, q)
    return self.to_out(out)


class ControlNetDouble:
    def __init__(self, unet, context_dim: int, seed: int = 11):
        torch.manual_seed(seed)
        self.unet = unet
        self.control = CrossAttention(query_dim=4, context_dim=context_dim, heads=1, dim_head=4).eval()
        self.control_contexts: list[torch.Tensor] = []
        self.saved: dict = {}
        self.fail_at: int | None = None
        self.calls = 0

    # -- UnetHook -----------------------------------------------------------------------------
    def hook_unet(self):
        model = self.unet
        model._original_forward = model.forward
        original = model.forward
        outer = self

        def forward_webui(x, timesteps=None, context=None, **kwargs):
            outer.control_contexts.append(context)
            tokens = x.flatten(2).transpose(1, 2)  # [B, HW, 4]
            residual = outer.control(tokens, context=context).transpose(1, 2).reshape(x.shape)
            return original(x, timesteps, context=context, **kwargs) + 0.1 * residual

        model.forward = forward_webui

    def restore_unet(self):
        self.unet.forward = self.unet._original_forward
        del self.unet._original_forward

    # -- PlugableIPAdapter --------------------------------------------------------------------
    def hack_ipadapter(self, modules, k: torch.Tensor, v: torch.Tensor, weight: float):
        def term(attn, x, q):
            self.calls += 1
            if self.fail_at is not None and self.calls >= self.fail_at:
                raise RuntimeError("ControlNet failed")
            kh = k[attn.layer_index].expand(q.shape[0], -1, -1)
            vh = v[attn.layer_index].expand(q.shape[0], -1, -1)
            b, heads, n, d = q.shape
            kh, vh = (t.view(b, -1, heads, d).transpose(1, 2) for t in (kh, vh))
            return weight * F.scaled_dot_product_attention(q, kh, vh).transpose(1, 2).reshape(b, n, heads * d)

        for i, module in enumerate(modules):
            module.layer_index = i
            if not getattr(module, "ipadapter_hacks", None):
                self.saved[module] = module.forward
                module.forward = types.MethodType(_attn_forward_hacked, module)
            module.ipadapter_hacks = [*getattr(module, "ipadapter_hacks", []), term]

    def clear_ipadapter(self):
        for module, forward in self.saved.items():
            module.forward = forward
            module.ipadapter_hacks = []
        self.saved = {}
