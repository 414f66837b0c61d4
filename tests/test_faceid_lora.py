"""FaceID's embedded LoRA: parsed from the adapter file, applied with hooks, removed bit-exactly.

Oracles:

* diffusers' own mapping of LoRA keys to attention processors (``_load_ip_adapter_loras``, which
  enumerates *every* processor, attn1 included) with diffusers' LoRA layers
  (``LoRACompatibleLinear`` + ``LoRALinearLayer``) on a tiny ``UNet2DConditionModel``; with the
  IP-Adapter itself loaded by diffusers too, the whole FaceID UNet call is compared;
* the LoRA merged into the weights (``W + s·up·down``, what a host LoRA does), for sums of units
  and for hosts that patch Linear forwards or weights.

diffusers' PEFT path cannot run here: it needs transformers ≥ 4.34 and A1111 pins 4.30.2. Its
legacy LoRA layers compute the same ``up(down(x))·alpha/rank`` and are diffusers' code, not ours.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.lora import LoRACompatibleLinear, LoRALinearLayer
from torch import nn

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.core.attend.lora import FaceIDLoRA, LoRAHooks, ldm_attention_pairs, output_linear
from ipadapter_ext.core.errors import IncompatibleModelError, ModelFileError
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import adapter_shapes, adapter_tensors

CTX = 32
ID = 16
RANK = 4


# -- a tiny diffusers UNet: cross-attention in down, up and middle blocks, one block of depth 2 ----------------


def tiny_diffusers_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CTX, attention_head_dim=4, norm_num_groups=8, transformer_layers_per_block=(1, 2),
    )  # fmt: skip
    return unet.eval().requires_grad_(False)


def diffusers_pairs(unet: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(attn1, attn2) per transformer block, attn2 in diffusers' processor order (the adapter's key order)."""
    modules = dict(unet.named_modules())
    attn2 = [n.removesuffix(".processor") for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [(modules[n.removesuffix("attn2") + "attn1"], modules[n]) for n in attn2]


def faceid_tensors(unet: nn.Module, kind: str = "faceid", seed: int = 3, rank: int = RANK, tokens: int = 4):
    widths = tuple(attn2.to_q.out_features for _, attn2 in diffusers_pairs(unet))
    return adapter_tensors(
        adapter_shapes(kind, CTX, widths, 24, id_dim=ID, lora_rank=rank, tokens=tokens, inner=64), seed=seed
    )


def inputs(seed: int = 1, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.tensor(500.0), torch.randn(batch, 7, CTX, generator=g)


def run(unet, x, t, ctx, **kw):
    return unet(x, t, encoder_hidden_states=ctx, **kw).sample


def with_diffusers_lora(unet: UNet2DConditionModel, ip_adapter: dict, strength: float) -> UNet2DConditionModel:
    """diffusers' key → processor map and diffusers' LoRA layers, on a copy of ``unet``."""
    unet = copy.deepcopy(unet)
    lora = unet._load_ip_adapter_loras([{"image_proj": {}, "ip_adapter": ip_adapter}])[0]
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        m = re.fullmatch(r"unet\.(.+)\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight", key)
        grouped.setdefault((m.group(1), m.group(2)), {})[m.group(3)] = value
    modules = dict(unet.named_modules())
    for (path, proj), parts in grouped.items():
        attn = modules[path]
        old = output_linear(attn) if proj == "out" else getattr(attn, f"to_{proj}")
        new = LoRACompatibleLinear(old.in_features, old.out_features, bias=old.bias is not None)
        new.load_state_dict(old.state_dict())
        rank = parts["down"].shape[0]
        layer = LoRALinearLayer(old.in_features, old.out_features, rank, network_alpha=strength * rank)
        layer.down.weight.data.copy_(parts["down"])
        layer.up.weight.data.copy_(parts["up"])
        new.set_lora_layer(layer)
        if proj == "out":
            attn.to_out[0] = new
        else:
            setattr(attn, f"to_{proj}", new)
    assert len(grouped) == 4 * 2 * len(diffusers_pairs(unet))  # every projection of every attn1 and attn2
    return unet.eval().requires_grad_(False)


def merge_into(unet: nn.Module, pairs_of, loras: list[tuple[FaceIDLoRA, float]]) -> nn.Module:
    """``W += s·up·down`` in place for each LoRA (in float64, then back), as a host's LoRA patches weights."""
    for lora, strength in loras:
        for n, pair in enumerate(pairs_of(unet)):
            for which, attn in enumerate(pair):
                for proj in ("q", "k", "v", "out"):
                    linear = output_linear(attn) if proj == "out" else getattr(attn, f"to_{proj}")
                    p = lora.layers[2 * n + which][proj]
                    update = strength * (p.up.double() @ p.down.double())
                    linear.weight.data = (linear.weight.data.double() + update).float()
    return unet


def merged(unet: nn.Module, pairs_of, loras: list[tuple[FaceIDLoRA, float]]) -> nn.Module:
    return merge_into(copy.deepcopy(unet), pairs_of, loras)


def assert_close_rel(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> float:
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= rel, err
    return err


# -- parsing -----------------------------------------------------------------------------------------------------


def test_adapter_model_parses_the_lora_of_faceid_only():
    unet = tiny_diffusers_unet()
    faceid = IPAdapterModel.from_tensors(faceid_tensors(unet), "ip-adapter-faceid_sd15.bin")
    assert faceid.lora is not None and faceid.lora.rank == RANK
    assert faceid.lora.num_blocks == faceid.info.num_layers == len(diffusers_pairs(unet))
    plus = IPAdapterModel.from_tensors(faceid_tensors(unet, "faceid_plus"), "ip-adapter-faceid-plusv2_sd15.bin")
    assert plus.lora is not None
    portrait = IPAdapterModel.from_tensors(faceid_tensors(unet, rank=0, tokens=16), "ip-adapter-faceid-portrait.bin")
    assert portrait.lora is None


def test_missing_or_misshapen_lora_tensors_name_the_key():
    tensors = faceid_tensors(tiny_diffusers_unet())
    broken = dict(tensors.ip_adapter)
    del broken["5.to_v_lora.up.weight"]
    with pytest.raises(ModelFileError, match=r"'5\.to_v_lora\.up\.weight'"):
        FaceIDLoRA.from_ip_adapter(broken, "f.bin")
    odd = dict(tensors.ip_adapter)
    odd["2.to_q_lora.up.weight"] = torch.zeros(16, RANK + 1)
    with pytest.raises(ModelFileError, match="layer 2 to_q"):
        FaceIDLoRA.from_ip_adapter(odd, "f.bin")
    gap = {k: v for k, v in tensors.ip_adapter.items() if not k.startswith("3.")}
    with pytest.raises(ModelFileError, match="do not cover"):
        FaceIDLoRA.from_ip_adapter(gap, "f.bin")
    assert FaceIDLoRA.from_ip_adapter({"1.to_k_ip.weight": torch.zeros(2, 2)}) is None


def test_a_lora_for_another_unet_is_refused_before_anything_is_hooked():
    unet = tiny_diffusers_unet()
    lora = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet).ip_adapter)
    pairs = diffusers_pairs(unet)
    with pytest.raises(IncompatibleModelError, match="transformer blocks"):
        lora.attach(pairs[:-1], 1.0)
    swapped = [pairs[-1], *pairs[1:-1], pairs[0]]  # widths 32 and 16 exchanged
    with pytest.raises(IncompatibleModelError, match="does not fit"):
        lora.attach(swapped, 1.0)
    assert all(not m._forward_hooks for m in unet.modules())


# -- against diffusers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [1.0, 0.6, -0.4])
@torch.no_grad()
def test_lora_equals_diffusers_on_a_diffusers_unet(strength):
    unet = tiny_diffusers_unet()
    tensors = faceid_tensors(unet)
    reference = with_diffusers_lora(unet, tensors.ip_adapter, strength)
    x, t, ctx = inputs()
    plain = run(unet, x, t, ctx)
    expected = run(reference, x, t, ctx)
    assert (expected - plain).abs().max() > 1e-2 * plain.abs().max()  # the LoRA matters
    lora = FaceIDLoRA.from_ip_adapter(tensors.ip_adapter)
    with lora.attach(diffusers_pairs(unet), strength):
        got = run(unet, x, t, ctx)
    assert_close_rel(got, expected)
    assert torch.equal(run(unet, x, t, ctx), plain)


@pytest.mark.parametrize("kind", ["faceid", "faceid_plus"])
@torch.no_grad()
def test_faceid_unet_call_equals_diffusers_with_ip_term_and_lora(kind):
    """The whole FaceID UNet call: diffusers' IP-Adapter (projection, IP processors, scale 0.6) and
    LoRA against our projection, our attn2 hooks and our LoRA hooks on the pristine UNet; the LoRA'd
    query is shared by text and image attention, and to_out's LoRA sees the image term."""
    unet = tiny_diffusers_unet()
    tensors = faceid_tensors(unet, kind)
    g = torch.Generator().manual_seed(9)
    face, hidden = torch.randn(1, ID, generator=g), torch.randn(1, 5, 24, generator=g)
    ours = IPAdapterModel.from_tensors(tensors, f"ip-adapter-{kind.replace('_', '-')}v2_sd15.bin")
    scale, shortcut, strength = 0.6, 1.3, 0.8

    reference = with_diffusers_lora(unet, tensors.ip_adapter, strength)
    state = {"image_proj": tensors.image_proj, "ip_adapter": tensors.ip_adapter}
    reference._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    for proc in reference.attn_processors.values():
        if hasattr(proc, "scale"):
            proc.scale = [scale]
    projection = reference.encoder_hid_proj.image_projection_layers[0]
    if kind == "faceid_plus":
        projection.clip_embeds, projection.shortcut, projection.shortcut_scale = hidden[:, None], True, shortcut
    x, t, ctx = inputs(batch=1)
    expected = run(reference, x, t, ctx, added_cond_kwargs={"image_embeds": [face[:, None]]})

    tokens = ours.project(EncodedImages(face=face, hidden=hidden if kind == "faceid_plus" else None), shortcut)
    kv = ours.layer_kv(tokens)
    pairs = diffusers_pairs(unet)
    with (  # image hooks first: the LoRA's hooks still run before the one keeping the query
        Attn2Hooks([a2 for _, a2 in pairs], lambda n, _q, _c: [ImageKV(*kv[n], scale)]),
        ours.lora.attach(pairs, strength),
    ):
        got = run(unet, x, t, ctx)
    print("relative error", assert_close_rel(got, expected))
    with Attn2Hooks([a2 for _, a2 in pairs], lambda n, _q, _c: [ImageKV(*kv[n], scale)]):
        assert not torch.allclose(run(unet, x, t, ctx), expected, rtol=1e-3, atol=1e-4)  # the LoRA mattered


# -- composition, removal ------------------------------------------------------------------------------------------


@torch.no_grad()
def test_two_units_sum_each_with_its_strength():
    unet = tiny_diffusers_unet()
    a = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet, seed=3).ip_adapter)
    b = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet, seed=4).ip_adapter)
    x, t, ctx = inputs()
    expected = run(merged(unet, diffusers_pairs, [(a, 0.7), (b, 0.4)]), x, t, ctx)
    pairs = diffusers_pairs(unet)
    with a.attach(pairs, 0.7), b.attach(pairs, 0.4):
        got = run(unet, x, t, ctx)
        only_a = LoRAHooks(a, pairs, 0.7)  # a second, not installed: changes nothing
        assert not only_a.installed
    assert_close_rel(got, expected)
    expected_a = run(merged(unet, diffusers_pairs, [(a, 0.7)]), x, t, ctx)  # copied before hooking
    with a.attach(pairs, 0.7):
        assert_close_rel(run(unet, x, t, ctx), expected_a)


@torch.no_grad()
def test_strength_zero_installs_nothing_and_removal_is_bit_exact_even_after_an_error():
    unet = tiny_diffusers_unet()
    lora = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet).ip_adapter)
    pairs = diffusers_pairs(unet)
    x, t, ctx = inputs()
    plain = run(unet, x, t, ctx)
    zero = lora.attach(pairs, 0.0)
    assert not zero.installed
    assert torch.equal(run(unet, x, t, ctx), plain)
    zero.remove()

    hooks = lora.attach(pairs, 1.0)
    assert hooks.installed
    assert not torch.equal(run(unet, x, t, ctx), plain)
    with pytest.raises(RuntimeError):
        run(unet, x, t, torch.randn(2, 7, CTX + 1))  # fails inside attn2's to_k, after attn1 ran hooked
    hooks.remove()
    hooks.remove()  # idempotent
    assert torch.equal(run(unet, x, t, ctx), plain)
    assert all(not m._forward_hooks for m in unet.modules())

    with pytest.raises(ValueError, match="boom"), lora.attach(pairs, 1.0):
        raise ValueError("boom")
    assert torch.equal(run(unet, x, t, ctx), plain)


@torch.no_grad()
def test_weights_are_cast_once_per_device_and_dtype_while_attached():
    unet = tiny_diffusers_unet()
    lora = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet).ip_adapter)
    x, t, ctx = inputs()
    double = copy.deepcopy(unet).double()  # copied before hooking (deepcopy would copy the hooks)
    hooks = lora.attach(diffusers_pairs(unet), 1.0)
    run(unet, x, t, ctx)
    cached = [{k: [w.data_ptr() for w in v] for k, v in delta._cast.items()} for _, delta in hooks._plan]
    assert all(len(c) == 1 for c in cached)
    run(unet, x, t, ctx)
    assert cached == [{k: [w.data_ptr() for w in v] for k, v in delta._cast.items()} for _, delta in hooks._plan]
    # the same LoRA on a float64 UNet gets float64 weights
    with lora.attach(diffusers_pairs(double), 1.0) as h64:
        out64 = run(double, x.double(), t, ctx.double())
        assert {k[1] for _, d in h64._plan for k in d._cast} == {torch.float64}
    assert_close_rel(out64.float(), run(unet, x, t, ctx))
    hooks.remove()
    assert all(not delta._cast for _, delta in hooks._plan)


# -- a host LoRA on the same modules ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["forward", "weights"])
@torch.no_grad()
def test_host_lora_and_ours_compose_and_ours_leaves_theirs_intact(host, monkeypatch):
    """``forward``: A1111's Lora extension replaces ``torch.nn.Linear.forward`` (here after our hooks
    were installed) and adds its own low-rank term; ``weights``: Forge and A1111 patch the weights."""
    unet = tiny_diffusers_unet()
    ours = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet, seed=3).ip_adapter)
    theirs = FaceIDLoRA.from_ip_adapter(faceid_tensors(unet, seed=8).ip_adapter)
    x, t, ctx = inputs()
    expected_both = run(merged(unet, diffusers_pairs, [(theirs, 0.5), (ours, 0.9)]), x, t, ctx)
    expected_theirs = run(merged(unet, diffusers_pairs, [(theirs, 0.5)]), x, t, ctx)

    hooks = ours.attach(diffusers_pairs(unet), 0.9)
    if host == "forward":
        host_terms = {}
        for n, pair in enumerate(diffusers_pairs(unet)):
            for which, attn in enumerate(pair):
                for proj, p in theirs.layers[2 * n + which].items():
                    linear = output_linear(attn) if proj == "out" else getattr(attn, f"to_{proj}")
                    host_terms[linear] = p
        original = nn.Linear.forward

        def network_forward(self, x):
            out = original(self, x)
            p = host_terms.get(self)
            return out if p is None else out + 0.5 * (x @ p.down.T @ p.up.T)

        monkeypatch.setattr(nn.Linear, "forward", network_forward)
    else:
        merge_into(unet, diffusers_pairs, [(theirs, 0.5)])  # patched after our hooks were installed
    assert_close_rel(run(unet, x, t, ctx), expected_both)
    hooks.remove()
    assert_close_rel(run(unet, x, t, ctx), expected_theirs)
    if host == "forward":
        assert nn.Linear.forward is network_forward


# -- the WebUI's ldm UNet ------------------------------------------------------------------------------------------


@torch.no_grad()
def test_ldm_pairs_hook_every_attention_projection_exactly_once():
    from tests.a1111_env import CTX as LDM_CTX
    from tests.a1111_env import attn2_widths, tiny_unet

    unet = tiny_unet()
    pairs = ldm_attention_pairs(unet.named_modules())
    names = {id(m): n for n, m in unet.named_modules()}
    assert len(pairs) == 16
    for attn1, attn2 in pairs:
        assert names[id(attn1)].removesuffix("attn1") == names[id(attn2)].removesuffix("attn2")
    assert [names[id(a2)] for _, a2 in pairs][:2] == [
        "input_blocks.1.1.transformer_blocks.0.attn2",
        "input_blocks.2.1.transformer_blocks.0.attn2",
    ]
    assert names[id(pairs[-1][1])] == "middle_block.1.transformer_blocks.0.attn2"
    shapes = adapter_shapes("faceid", LDM_CTX, attn2_widths(unet), 0, id_dim=ID, lora_rank=RANK)
    lora = FaceIDLoRA.from_ip_adapter(adapter_tensors(shapes).ip_adapter)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 5, LDM_CTX, generator=g)
    plain = unet(x, torch.tensor([400.0]), context=ctx)
    with lora.attach(pairs, 1.0):
        hooked = [n for n, m in unet.named_modules() if m._forward_hooks]
        expected = {
            f"{n}.{p}"
            for n, m in unet.named_modules()
            if n.endswith(("attn1", "attn2"))
            for p in ("to_q", "to_k", "to_v", "to_out.0")
        }
        assert len(hooked) == len(expected) == 16 * 2 * 4
        assert set(hooked) == expected
        assert all(len(m._forward_hooks) == 1 for m in unet.modules() if m._forward_hooks)
        changed = unet(x, torch.tensor([400.0]), context=ctx)
    assert not torch.allclose(changed, plain)
    assert torch.equal(unet(x, torch.tensor([400.0]), context=ctx), plain)
    merged_unet = merged(unet, lambda u: ldm_attention_pairs(u.named_modules()), [(lora, 1.0)])
    assert_close_rel(changed, merged_unet(x, torch.tensor([400.0]), context=ctx))


class _PackedLinear(nn.Module):
    """Stands in for Forge's quantised Linear: no ``in_features``, a packed weight of another shape."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.inner = linear
        self.weight = nn.Parameter(torch.zeros(linear.weight.numel() // 2, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@torch.no_grad()
def test_linear_like_modules_without_features_are_hooked_unchecked():
    unet = tiny_diffusers_unet()
    tensors = faceid_tensors(unet)
    lora = FaceIDLoRA.from_ip_adapter(tensors.ip_adapter)
    x, t, ctx = inputs()
    expected = run(merged(unet, diffusers_pairs, [(lora, 0.8)]), x, t, ctx)
    for _, attn2 in diffusers_pairs(unet):
        attn2.to_k = _PackedLinear(attn2.to_k)
    with lora.attach(diffusers_pairs(unet), 0.8):
        assert_close_rel(run(unet, x, t, ctx), expected)
