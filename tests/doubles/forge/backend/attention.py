"""Double of ``backend/attention.py`` of lllyasviel/stable-diffusion-webui-forge (dfdcbab6):
``attention_function(q, k, v, heads, mask=None, skip_reshape=False)`` takes q/k/v as
[B, N, heads·d] (or, with ``skip_reshape``, already split as [B, heads, N, d], how Flux calls it)
and returns the attention output as [B, N, heads·d], before ``to_out``. Own implementation
(PyTorch SDPA, like Forge's default kernel)."""

import torch.nn.functional as F

calls = {"n": 0}


def attention_function(q, k, v, heads, mask=None, skip_reshape=False):
    calls["n"] += 1
    if skip_reshape:
        b, _, _, d = q.shape
        qh, kh, vh = q, k, v
    else:
        b, _, inner = q.shape
        d = inner // heads
        qh, kh, vh = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, heads * d)
