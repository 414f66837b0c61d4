"""A tiny Flux for the tests: diffusers' ``FluxTransformer2DModel`` as the oracle, the same weights
in the double of Forge's ``IntegratedFluxTransformer2DModel`` (BFL layout, converted here), and
tiny XLabs-format adapter files that diffusers' own Flux IP-Adapter loader reads.

The double lives under tests/doubles/forge, which the caller puts on ``sys.path`` (the module is
``backend.nn.flux`` there, as in Forge).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

LATENT_C = 4  # latent channels; both models see 2×2 patches of them (16 wide)
HEADS, HEAD_DIM = 2, 16
HIDDEN = HEADS * HEAD_DIM
AXES = (4, 6, 6)
TXT = 24  # T5 width (joint_attention_dim); XLabs' image tokens have the same width
POOLED = 20
DOUBLE, SINGLE = 2, 2
EMBED = 40  # the tiny CLIP's projection width (tests/test_encoder.py TINY)


def diffusers_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_C * 4,
        num_layers=DOUBLE,
        num_single_layers=SINGLE,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=TXT,
        pooled_projection_dim=POOLED,
        guidance_embeds=True,
        axes_dims_rope=AXES,
    ).eval()
    with torch.no_grad():  # every weight non-trivial, norms included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def forge_flux():
    from backend.nn.flux import IntegratedFluxTransformer2DModel

    return IntegratedFluxTransformer2DModel(
        in_channels=LATENT_C,
        vec_in_dim=POOLED,
        context_in_dim=TXT,
        hidden_size=HIDDEN,
        mlp_ratio=4.0,
        num_heads=HEADS,
        depth=DOUBLE,
        depth_single_blocks=SINGLE,
        axes_dim=list(AXES),
        theta=10000,
        qkv_bias=True,
        guidance_embed=True,
    ).eval()


def _linear(out: dict, dst: str, sd: dict, src: str) -> None:
    out[f"{dst}.weight"], out[f"{dst}.bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]


def _cat_linear(out: dict, dst: str, sd: dict, srcs: list[str]) -> None:
    out[f"{dst}.weight"] = torch.cat([sd[f"{s}.weight"] for s in srcs])
    out[f"{dst}.bias"] = torch.cat([sd[f"{s}.bias"] for s in srcs])


def bfl_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Flux state dict → the BFL names Forge's module uses."""
    out: dict[str, torch.Tensor] = {}
    _linear(out, "img_in", sd, "x_embedder")
    _linear(out, "txt_in", sd, "context_embedder")
    for dst, src in (
        ("time_in", "timestep_embedder"),
        ("guidance_in", "guidance_embedder"),
        ("vector_in", "text_embedder"),
    ):
        _linear(out, f"{dst}.in_layer", sd, f"time_text_embed.{src}.linear_1")
        _linear(out, f"{dst}.out_layer", sd, f"time_text_embed.{src}.linear_2")
    for i in range(DOUBLE):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        _linear(out, f"{b}.img_mod.lin", sd, f"{d}.norm1.linear")
        _linear(out, f"{b}.txt_mod.lin", sd, f"{d}.norm1_context.linear")
        _cat_linear(out, f"{b}.img_attn.qkv", sd, [f"{d}.attn.to_{x}" for x in "qkv"])
        _cat_linear(out, f"{b}.txt_attn.qkv", sd, [f"{d}.attn.add_{x}_proj" for x in "qkv"])
        out[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        out[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        out[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        _linear(out, f"{b}.img_attn.proj", sd, f"{d}.attn.to_out.0")
        _linear(out, f"{b}.txt_attn.proj", sd, f"{d}.attn.to_add_out")
        _linear(out, f"{b}.img_mlp.0", sd, f"{d}.ff.net.0.proj")
        _linear(out, f"{b}.img_mlp.2", sd, f"{d}.ff.net.2")
        _linear(out, f"{b}.txt_mlp.0", sd, f"{d}.ff_context.net.0.proj")
        _linear(out, f"{b}.txt_mlp.2", sd, f"{d}.ff_context.net.2")
    for i in range(SINGLE):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        _cat_linear(out, f"{b}.linear1", sd, [f"{d}.attn.to_{x}" for x in "qkv"] + [f"{d}.proj_mlp"])
        _linear(out, f"{b}.linear2", sd, f"{d}.proj_out")
        _linear(out, f"{b}.modulation.lin", sd, f"{d}.norm.linear")
        out[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        out[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
    scale, shift = sd["norm_out.linear.weight"].chunk(2), sd["norm_out.linear.bias"].chunk(2)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([scale[1], scale[0]])  # (scale, shift) → (shift, scale)
    out["final_layer.adaLN_modulation.1.bias"] = torch.cat([shift[1], shift[0]])
    _linear(out, "final_layer.linear", sd, "proj_out")
    return out


def twin_models(seed: int = 0):
    """(diffusers model, Forge double) holding the same weights."""
    reference = diffusers_flux(seed)
    double = forge_flux()
    double.load_state_dict(bfl_state_dict(reference.state_dict()), strict=True)
    return reference, double


def pack(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, cp = x.shape
    c = cp // 4
    return x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.no_grad()
def diffusers_out(model, x, sigma, context, y, guidance, ip_embeds=None, attention_mask=None) -> torch.Tensor:
    """The model's prediction for latent ``x`` [B, C, H, W] as [B, C, H, W]; ``ip_embeds``: one
    [B, 1, D] image-embeds tensor per loaded adapter; ``attention_mask``: an additive bias over
    ``[text, image]`` given to every block's attention. The text positions are made for the
    context's length (all zero), so a longer context needs nothing else."""
    _, _, h, w = x.shape
    img_ids = torch.zeros(h // 2, w // 2, 3)
    img_ids[..., 1] = torch.arange(h // 2)[:, None]
    img_ids[..., 2] = torch.arange(w // 2)[None, :]
    kwargs = {"ip_adapter_image_embeds": ip_embeds} if ip_embeds is not None else {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    out = model(
        hidden_states=pack(x), encoder_hidden_states=context, pooled_projections=y, timestep=sigma,
        img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(context.shape[1], 3), guidance=guidance,
        joint_attention_kwargs=kwargs or None, return_dict=False,
    )[0]  # fmt: skip
    return unpack(out, h, w)


def xlabs_tensors(
    tokens: int = 4, blocks: int = DOUBLE, seed: int = 0, embed: int = EMBED, txt: int = TXT, hidden: int = HIDDEN
) -> dict[str, torch.Tensor]:
    """A tiny adapter under XLabs' key names (``txt``: the text-token width, ``hidden``: the
    transformer's; the e2e suite sizes them to a real checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "ip_adapter_proj_model.proj.weight": torch.randn(tokens * txt, embed, generator=g) / embed**0.5,
        "ip_adapter_proj_model.proj.bias": 0.1 * torch.randn(tokens * txt, generator=g),
        "ip_adapter_proj_model.norm.weight": 1 + 0.1 * torch.randn(txt, generator=g),
        "ip_adapter_proj_model.norm.bias": 0.1 * torch.randn(txt, generator=g),
    }
    for n in range(blocks):
        for kv in "kv":
            key = f"double_blocks.{n}.processor.ip_adapter_double_stream_{kv}_proj"
            out[f"{key}.weight"] = torch.randn(hidden, txt, generator=g) / txt**0.5
            out[f"{key}.bias"] = 0.1 * torch.randn(hidden, generator=g)
    return out


def save_xlabs(path: Path, tokens: int = 4, seed: int = 0) -> Path:
    save_file({k: v.contiguous() for k, v in xlabs_tensors(tokens, seed=seed).items()}, str(path))
    return path


def diffusers_state_dict(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """An XLabs file as diffusers' ``FluxIPAdapterMixin.load_ip_adapter`` reads it (that pipeline
    mixin cannot be imported with transformers 4.30, so its key mapping is restated here): the
    projection under ``image_proj`` without its prefix, each block's K/V as ``N.to_{k,v}_ip.*``."""
    from safetensors.torch import load_file

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(str(path)).items():
        head, rest = key.split(".", 1)
        if head == "ip_adapter_proj_model":
            state["image_proj"][rest] = value
        elif head == "double_blocks":
            block, _, name = rest.split(".", 2)  # N, "processor", ip_adapter_double_stream_k_proj.weight
            kind, param = name.rsplit(".", 1)
            state["ip_adapter"][f"{block}.to_{kind[-6]}_ip.{param}"] = value
    return state


def load_into_diffusers(model, paths: list[Path], scales: list[float]) -> None:
    """diffusers' transformer-level Flux IP-Adapter loader
    (``FluxTransformer2DLoadersMixin._load_ip_adapter_weights``) on ``model``, then ``scale`` per
    adapter on every double block's processor."""
    model._load_ip_adapter_weights([diffusers_state_dict(p) for p in paths], low_cpu_mem_usage=False)
    set_diffusers_scales(model, scales)


def set_diffusers_scales(model, scales: list[float]) -> None:
    for name, proc in model.attn_processors.items():
        if name.startswith("transformer_blocks"):
            proc.scale = list(scales)


SIGLIP_WIDTH = 128  # the tiny SigLIP's width (tests/siglip_env.py TINY_SIGLIP)


def instantx_tensors(
    tokens: int = 4,
    blocks: int = DOUBLE + SINGLE,
    seed: int = 0,
    embed: int = SIGLIP_WIDTH,
    txt: int = TXT,
    hidden: int = HIDDEN,
) -> dict[str, torch.Tensor]:
    """A tiny InstantX FLUX.1-dev IP-Adapter under its flat key names (``ip-adapter.bin`` holds the
    same as a nested ``{"image_proj": …, "ip_adapter": …}`` dict): the MLP projection (``proj.0``,
    ``proj.2``, ``norm``; 2·embed wide inside) and one K/V pair without bias per block, double
    blocks first (the real file: 128 tokens, 19 + 38 blocks, SigLIP so400m's 1152 in)."""
    g = torch.Generator().manual_seed(seed)
    inner = 2 * embed
    out = {
        "image_proj.proj.0.weight": torch.randn(inner, embed, generator=g) / embed**0.5,
        "image_proj.proj.0.bias": 0.1 * torch.randn(inner, generator=g),
        "image_proj.proj.2.weight": torch.randn(tokens * txt, inner, generator=g) / inner**0.5,
        "image_proj.proj.2.bias": 0.1 * torch.randn(tokens * txt, generator=g),
        "image_proj.norm.weight": 1 + 0.1 * torch.randn(txt, generator=g),
        "image_proj.norm.bias": 0.1 * torch.randn(txt, generator=g),
    }
    for n in range(blocks):
        out[f"ip_adapter.{n}.to_k_ip.weight"] = torch.randn(hidden, txt, generator=g) / txt**0.5
        out[f"ip_adapter.{n}.to_v_ip.weight"] = torch.randn(hidden, txt, generator=g) / txt**0.5
    return out


def save_instantx(path: Path, **kw) -> Path:
    """As InstantX ships it: a torch pickle of nested dicts (read back weights-only)."""
    flat = instantx_tensors(**kw)
    nested = {
        part: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(part + ".")}
        for part in ("image_proj", "ip_adapter")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, str(path))
    return path


def redux_tensors(embed: int = SIGLIP_WIDTH, txt: int = TXT, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny Flux Redux (``flux1-redux-dev.safetensors``): ``redux_up`` embed → 3·txt, ``redux_down``
    3·txt → txt, as diffusers' ``ReduxImageEncoder(redux_dim, txt_in_features)``."""
    g = torch.Generator().manual_seed(seed)
    return {
        "redux_up.weight": torch.randn(3 * txt, embed, generator=g) / embed**0.5,
        "redux_up.bias": 0.1 * torch.randn(3 * txt, generator=g),
        "redux_down.weight": torch.randn(txt, 3 * txt, generator=g) / (3 * txt) ** 0.5,
        "redux_down.bias": 0.1 * torch.randn(txt, generator=g),
    }


def save_redux(path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in redux_tensors(**kw).items()}, str(path))
    return path
