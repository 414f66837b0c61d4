"""InstantX's FLUX.1-dev IP-Adapter: detection from tensors, loading the ``.bin`` weights-only,
and our path on the double of Forge's Flux (object patches on every double and single block)
against diffusers' ``FluxTransformer2DModel`` running an independent reference written here from
the published attention math (InstantX's ``IPAFluxAttnProcessor2_0``):

* the block's query after its QK norm, before RoPE (double blocks: the image stream's; single
  blocks: the whole ``[text, image]`` sequence's);
* ``K = RMSNorm_head(tokens · W_kᵀ)`` (eps 1e-5, no weight), ``V = tokens · W_vᵀ`` (not
  normalised), no bias;
* ``scale · SDPA(q, K, V)`` added to the attention output before the output projection (double:
  ``to_out``; single: the attention part of ``proj_out``'s input);
* the tokens: ``LayerNorm(Linear(GELU(Linear(pooled))))`` reshaped to T tokens.

The reference's projection and K/V are computed here from the raw file tensors, not by our loader.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.attend.masks import RegionMask
from ipadapter_ext.core.errors import IncompatibleModelError, ModelFileError
from ipadapter_ext.core.job import PreparedUnit
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.compat import UNetSignature, check_unet
from ipadapter_ext.core.load.detect import detect_adapter
from ipadapter_ext.core.load.formats import read_flat_tensors
from ipadapter_ext.core.project.projections import EncodedImages
from tests.flux_env import DOUBLE, HEAD_DIM, HEADS, HIDDEN, SIGLIP_WIDTH, SINGLE, TXT, instantx_tensors, save_instantx
from tests.test_flux import ATOL, FORGE_DOUBLES, RTOL, Setup

TOKENS = 4


@pytest.fixture
def doubles(monkeypatch):
    monkeypatch.syspath_prepend(FORGE_DOUBLES)


def _shapes(flat):
    return {k: tuple(v.shape) for k, v in flat.items()}


# -- detection and loading ------------------------------------------------------------------------
def test_detected_from_its_shapes_as_published():
    info = detect_adapter(
        _shapes(instantx_tensors(tokens=128, blocks=57, embed=1152, txt=4096, hidden=3072)), "ip-adapter.bin"
    )
    assert (info.variant, info.arch, info.family, info.tokens, info.context_dim) == (
        "instantx-flux",
        "flux",
        "Flux",
        128,
        4096,
    )
    assert info.num_layers == 57 and info.layer_widths == (3072,) * 57
    assert info.describe() == "InstantX Flux IP-Adapter · 128 tokens · needs SigLIP so400m"


def test_bin_loads_weights_only_and_equals_its_tensors(tmp_path):
    path = save_instantx(tmp_path / "ip-adapter.bin", tokens=TOKENS, seed=4)
    adapter = IPAdapterModel.from_file(path)
    flat = instantx_tensors(tokens=TOKENS, seed=4)
    assert adapter.to_k_bias is None and len(adapter.to_k) == DOUBLE + SINGLE
    assert torch.equal(adapter.to_v[DOUBLE], flat[f"ip_adapter.{DOUBLE}.to_v_ip.weight"])
    evil = tmp_path / "evil-ip-adapter.bin"
    torch.save({"image_proj": {}, "ip_adapter": {}, "x": Path("/")}, str(evil))  # a Python object in the pickle
    with pytest.raises(ModelFileError, match="refused to load"):
        IPAdapterModel.from_file(evil)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: f.pop("ip_adapter.1.to_v_ip.weight"), "must be equal"),
        (lambda f: f.pop("ip_adapter.0.to_k_ip.weight"), "not an IP-Adapter|not 0, 1, 2|not the odd"),
        (lambda f: f.update({"image_proj.norm.weight": torch.ones(7)}), "no whole number"),
    ],
)
def test_damaged_files_are_named(damage, message):
    flat = instantx_tensors()
    damage(flat)
    with pytest.raises(ModelFileError, match=message):
        detect_adapter(_shapes(flat), "broken.bin")


def test_checks_against_the_loaded_flux():
    info = detect_adapter(_shapes(instantx_tensors()), "ix")
    flux = UNetSignature(TXT, (HIDDEN,) * DOUBLE, "Flux", arch="flux", single_blocks=SINGLE, head_dim=HEAD_DIM)
    check_unet(info, flux)
    with pytest.raises(
        IncompatibleModelError, match=r"3 blocks \(double and single\).*has 4 blocks \(2 double, 2 single\)"
    ):
        check_unet(detect_adapter(_shapes(instantx_tensors(blocks=3)), "ix"), flux, "'ix'")
    with pytest.raises(IncompatibleModelError, match=r"'ix' is a Flux IP-Adapter .*checkpoint is SD1\.5"):
        check_unet(info, UNetSignature(768, (320,) * 16, "SD1.5"), "'ix'")


# -- the math against diffusers ---------------------------------------------------------------------
class Reference:
    """InstantX's attention processor on one diffusers block, from the published math."""

    def __init__(self, k_w: torch.Tensor, v_w: torch.Tensor, tokens: torch.Tensor, scale: float, **broken: bool):
        self.k_w, self.v_w, self.tokens, self.scale = k_w, v_w, tokens, scale
        self.image_mask: torch.Tensor | None = None  # [image tokens] region weights
        self.broken = broken

    def term(self, q: torch.Tensor) -> torch.Tensor:
        """q: [B, L, heads, d] after norm_q, before RoPE → scale · Attn as [B, L, heads·d]."""
        b, length, heads, d = q.shape
        tokens = self.tokens.expand(b, -1, -1)
        k = (tokens @ self.k_w.T).unflatten(-1, (heads, d))
        v = (tokens @ self.v_w.T).unflatten(-1, (heads, d))
        if not self.broken.get("no_key_norm"):
            k = k * torch.rsqrt(k.pow(2).mean(-1, keepdim=True) + 1e-5)
        if self.broken.get("value_norm"):
            v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = self.scale * out.transpose(1, 2).flatten(2)
        if self.image_mask is not None:
            image = self.image_mask.numel()
            weights = torch.cat((torch.zeros(length - image), self.image_mask)).view(1, -1, 1)
            out = out * weights
        return out

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (attn.heads, -1)))
        v = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        term = self.term(q)
        if encoder_hidden_states is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (attn.heads, -1))
            q, k, v = torch.cat((eq, q), 1), torch.cat((ek, k), 1), torch.cat((ev, v), 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attention_mask
        )
        out = out.transpose(1, 2).flatten(2)
        if encoder_hidden_states is None:  # single block: the term goes into proj_out with the attention
            return out if self.broken.get("skip_single") else out + term
        text = encoder_hidden_states.shape[1]
        context, image = out[:, :text], out[:, text:]
        after = self.broken.get("after_projection")
        image = attn.to_out[0](image) + term if after else attn.to_out[0](image + term)
        return attn.to_out[1](image), attn.to_add_out(context)


def reference_tokens(flat: dict[str, torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
    """The MLP projection from the file's tensors: [N, T, C]."""
    h = F.gelu(pooled @ flat["image_proj.proj.0.weight"].T + flat["image_proj.proj.0.bias"])
    out = (h @ flat["image_proj.proj.2.weight"].T + flat["image_proj.proj.2.bias"]).view(pooled.shape[0], -1, TXT)
    return F.layer_norm(out, (TXT,), flat["image_proj.norm.weight"], flat["image_proj.norm.bias"])


class IxSetup(Setup):
    """Twin models and inputs (test_flux.Setup) with InstantX adapter files."""

    def __init__(self, tmp_path: Path, n: int = 1, batch: int = 1):
        super().__init__(tmp_path, n_adapters=0, batch=batch)
        self.ix_paths = [save_instantx(tmp_path / f"ix{i}.bin", tokens=TOKENS, seed=20 + i) for i in range(n)]
        self.ix = [IPAdapterModel.from_file(p) for p in self.ix_paths]
        self.flat = [read_flat_tensors(p) for p in self.ix_paths]
        g = torch.Generator().manual_seed(9)
        self.pooled = [torch.randn(1, SIGLIP_WIDTH, generator=g) for _ in self.ix]
        self.black_pooled = [torch.randn(1, SIGLIP_WIDTH, generator=g) for _ in self.ix]

    def ix_unit(self, i: int, weight: float, **kw) -> PreparedUnit:
        adapter = self.ix[i]
        cond = adapter.project(EncodedImages(image_embeds=self.pooled[i])).reshape(1, -1, TXT)
        uncond = adapter.project(EncodedImages(image_embeds=self.black_pooled[i])).reshape(1, -1, TXT)
        kv = UnitKV(adapter, cond, uncond, "cpu", torch.float32, head_dim=HEAD_DIM)
        return PreparedUnit(100 + i, adapter, kv, weight, **kw)

    def install(self, scales: list[float], pooled: list[torch.Tensor] | None = None, **broken: bool) -> list[Reference]:
        """Reference processors on every diffusers block, one adapter's term per unit summed."""
        pooled = pooled or self.pooled
        refs = []
        blocks = [*self.reference.transformer_blocks, *self.reference.single_transformer_blocks]
        for n, block in enumerate(blocks):
            parts = [
                Reference(f[f"ip_adapter.{n}.to_k_ip.weight"], f[f"ip_adapter.{n}.to_v_ip.weight"], reference_tokens(f, p), s, **broken)
                for f, p, s in zip(self.flat, pooled, scales, strict=True)
            ]  # fmt: skip
            block.attn.set_processor(_Sum(parts))
            refs.extend(parts)
        return refs


class _Sum:
    """Several units' references on one block: each adds its term (the first runs the attention)."""

    def __init__(self, parts: list[Reference]):
        self.parts = parts

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        first, *rest = self.parts
        extra = [r.term for r in rest]
        original = first.term
        first.term = lambda q: original(q) + sum((t(q) for t in extra), torch.zeros(()))
        try:
            return first(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            first.term = original


@pytest.mark.parametrize("weight", [1.0, 0.6, 0.0])
def test_instantx_unit_equals_the_reference(doubles, tmp_path, weight):
    s = IxSetup(tmp_path)
    s.install([weight])
    cond, _ = s.run([s.ix_unit(0, weight)])
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)
    again, _ = s.run([s.ix_unit(0, weight)])
    assert torch.equal(again, cond)  # the next call: bit-identical
    baseline, _ = s.run(None)
    if weight == 0:
        assert torch.equal(cond, baseline)  # weight 0: no term, bit-identical to no unit
    else:
        assert (cond - baseline).abs().max() > 1e-3


@pytest.mark.parametrize("broken", ["no_key_norm", "value_norm", "after_projection", "skip_single"])
def test_a_slightly_different_term_is_caught(doubles, tmp_path, broken):
    s = IxSetup(tmp_path)
    s.install([1.0], **{broken: True})
    cond, _ = s.run([s.ix_unit(0, 1.0)])
    assert (cond - s.oracle(None)).abs().max() > 10 * ATOL, f"the tests cannot tell {broken!r} from the published math"


@pytest.mark.parametrize("batching", [((1, 0),), ((1,), (0,))])
def test_true_cfg_uncond_rows_get_the_black_image_tokens(doubles, tmp_path, batching):
    s = IxSetup(tmp_path, batch=2)
    s.install([0.8])
    cond, uncond = s.run([s.ix_unit(0, 0.8)], uncond=True, batching=batching)
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)
    s.install([0.8], pooled=s.black_pooled)
    torch.testing.assert_close(uncond, s.oracle(None, "uncond"), rtol=RTOL, atol=ATOL)


def test_two_units_add(doubles, tmp_path):
    s = IxSetup(tmp_path, n=2)
    s.install([0.7, 1.3])
    cond, _ = s.run([s.ix_unit(0, 0.7), s.ix_unit(1, 1.3)])
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)


def test_region_mask_covers_image_tokens_only(doubles, tmp_path):
    s = IxSetup(tmp_path)
    mask = torch.zeros(30, 40)
    mask[:, :20] = 1.0  # the left half: token columns 0-1 of the 3×4 grid
    refs = s.install([1.0])
    grid = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3).reshape(-1)
    for ref in refs:
        ref.image_mask = grid
    cond, _ = s.run([s.ix_unit(0, 1.0, mask=RegionMask(mask))])
    torch.testing.assert_close(cond, s.oracle(None), rtol=RTOL, atol=ATOL)


def test_keys_are_normalised_once_per_generation(tmp_path):
    path = save_instantx(tmp_path / "ix.bin", tokens=TOKENS)
    adapter = IPAdapterModel.from_file(path)
    tokens = torch.randn(2, TOKENS, TXT)
    kv = UnitKV(adapter, tokens[:1], tokens[1:], "cpu", torch.float32, head_dim=HEAD_DIM)
    k = kv.kv[0][0].unflatten(-1, (HEADS, HEAD_DIM))
    torch.testing.assert_close(k.pow(2).mean(-1), torch.ones(2, TOKENS, HEADS), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="head width"):
        UnitKV(adapter, tokens[:1], tokens[1:], "cpu", torch.float32)
