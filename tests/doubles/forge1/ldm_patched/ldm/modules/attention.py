"""Double of the kernel of ``ldm_patched/ldm/modules/attention.py`` in reForge main (3b56b268):
``optimized_attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
skip_output_reshape=False)``, q/k/v as [B, N, heads·d], output [B, N, heads·d] before ``to_out``.
The module-level name is what ``CrossAttention.forward`` calls, with ``attn_precision=`` its own.
Forge Classic 1f95d717's kernel is ``optimized_attention(q, k, v, heads, mask=None)``: tests swap
in :func:`classic_attention`. Own implementation (PyTorch SDPA, the CPU default of both);
``calls`` records what each call was given.
"""

import torch.nn.functional as F

calls = []


def _sdpa(q, k, v, heads, mask):
    b, _, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, -1, heads * d)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False):
    calls.append({"heads": heads, "attn_precision": attn_precision, "mask": mask})
    return _sdpa(q, k, v, heads, mask)


def classic_attention(q, k, v, heads, mask=None):
    calls.append({"heads": heads, "classic": True, "mask": mask})
    return _sdpa(q, k, v, heads, mask)


optimized_attention = attention_pytorch
