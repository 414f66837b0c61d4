"""The tiny SDXL checkpoint's tensors: every key with its shape and initialisation, and random values.

:func:`checkpoint_shapes` lists the keys in the order sgm's modules define them (UNet, VAE, the
CLIP-L and open_clip text encoders, at the sizes of :class:`~tests.e2e.sdxl_spec.Spec`);
:func:`random_state_dict` fills them from a seeded generator. Torch is imported only there.
"""

from __future__ import annotations

from .sdxl_spec import SPEC, VOCAB_SIZE, Spec


class _Shapes:
    """Key → (shape, how to initialise it), in the order the modules define them."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[tuple[int, ...], str]] = {}

    def add(self, key: str, shape: tuple[int, ...], init: str) -> None:
        assert key not in self.items, key
        self.items[key] = (tuple(shape), init)

    def linear(self, name: str, out: int, inp: int, bias: bool = True) -> None:
        self.add(f"{name}.weight", (out, inp), "weight")
        if bias:
            self.add(f"{name}.bias", (out,), "bias")

    def conv(self, name: str, out: int, inp: int, k: int = 3) -> None:
        self.add(f"{name}.weight", (out, inp, k, k), "weight")
        self.add(f"{name}.bias", (out,), "bias")

    def norm(self, name: str, dim: int) -> None:
        self.add(f"{name}.weight", (dim,), "norm_weight")
        self.add(f"{name}.bias", (dim,), "bias_norm")


def _unet_resblock(s: _Shapes, name: str, cin: int, cout: int, time_dim: int) -> None:
    s.norm(f"{name}.in_layers.0", cin)
    s.conv(f"{name}.in_layers.2", cout, cin)
    s.linear(f"{name}.emb_layers.1", cout, time_dim)
    s.norm(f"{name}.out_layers.0", cout)
    s.conv(f"{name}.out_layers.3", cout, cout)
    if cin != cout:
        s.conv(f"{name}.skip_connection", cout, cin, 1)


def _spatial_transformer(s: _Shapes, name: str, ch: int, depth: int, context: int) -> None:
    """sgm's SpatialTransformer with ``use_linear``: inner width = channels (heads × head width)."""
    s.norm(f"{name}.norm", ch)
    s.linear(f"{name}.proj_in", ch, ch)
    for d in range(depth):
        block = f"{name}.transformer_blocks.{d}"
        for attn, kv_width in (("attn1", ch), ("attn2", context)):
            s.linear(f"{block}.{attn}.to_q", ch, ch, bias=False)
            s.linear(f"{block}.{attn}.to_k", ch, kv_width, bias=False)
            s.linear(f"{block}.{attn}.to_v", ch, kv_width, bias=False)
            s.linear(f"{block}.{attn}.to_out.0", ch, ch)
        s.linear(f"{block}.ff.net.0.proj", 8 * ch, ch)  # GEGLU: 4× inner, doubled for the gate
        s.linear(f"{block}.ff.net.2", ch, 4 * ch)
        for n in (1, 2, 3):
            s.norm(f"{block}.norm{n}", ch)
    s.linear(f"{name}.proj_out", ch, ch)


def unet_shapes(spec: Spec = SPEC, prefix: str = "model.diffusion_model.") -> _Shapes:
    """sgm's ``UNetModel`` as SDXL configures it (``num_classes: sequential``, linear projections
    in the transformers, no attention at the first level, up-sampling by conv)."""
    s = _Shapes()
    mc, td, ctx = spec.model_channels, spec.time_dim, spec.context_dim
    s.linear(f"{prefix}time_embed.0", td, mc)
    s.linear(f"{prefix}time_embed.2", td, td)
    s.linear(f"{prefix}label_emb.0.0", td, spec.adm_in_channels)
    s.linear(f"{prefix}label_emb.0.2", td, td)
    s.conv(f"{prefix}input_blocks.0.0", mc, 4)
    chans, ch, block = [mc], mc, 1
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.res_blocks):
            _unet_resblock(s, f"{prefix}input_blocks.{block}.0", ch, mult * mc, td)
            ch = mult * mc
            if spec.depths[level]:
                _spatial_transformer(s, f"{prefix}input_blocks.{block}.1", ch, spec.depths[level], ctx)
            chans.append(ch)
            block += 1
        if level != len(spec.channel_mult) - 1:
            s.conv(f"{prefix}input_blocks.{block}.0.op", ch, ch)
            chans.append(ch)
            block += 1
    _unet_resblock(s, f"{prefix}middle_block.0", ch, ch, td)
    _spatial_transformer(s, f"{prefix}middle_block.1", ch, spec.depths[-1], ctx)
    _unet_resblock(s, f"{prefix}middle_block.2", ch, ch, td)
    block = 0
    for level in reversed(range(len(spec.channel_mult))):
        out = spec.channel_mult[level] * mc
        for i in range(spec.res_blocks + 1):
            _unet_resblock(s, f"{prefix}output_blocks.{block}.0", ch + chans.pop(), out, td)
            ch = out
            sub = 1
            if spec.depths[level]:
                _spatial_transformer(s, f"{prefix}output_blocks.{block}.1", ch, spec.depths[level], ctx)
                sub = 2
            if level and i == spec.res_blocks:
                s.conv(f"{prefix}output_blocks.{block}.{sub}.conv", ch, ch)
            block += 1
    s.norm(f"{prefix}out.0", ch)
    s.conv(f"{prefix}out.2", 4, mc)
    return s


def _vae_resblock(s: _Shapes, name: str, cin: int, cout: int) -> None:
    s.norm(f"{name}.norm1", cin)
    s.conv(f"{name}.conv1", cout, cin)
    s.norm(f"{name}.norm2", cout)
    s.conv(f"{name}.conv2", cout, cout)
    if cin != cout:
        s.conv(f"{name}.nin_shortcut", cout, cin, 1)


def _vae_mid(s: _Shapes, name: str, ch: int) -> None:
    _vae_resblock(s, f"{name}.block_1", ch, ch)
    s.norm(f"{name}.attn_1.norm", ch)
    for proj in ("q", "k", "v", "proj_out"):
        s.conv(f"{name}.attn_1.{proj}", ch, ch, 1)
    _vae_resblock(s, f"{name}.block_2", ch, ch)


def vae_shapes(spec: Spec = SPEC, prefix: str = "first_stage_model.", blocks: int = 1) -> _Shapes:
    """The KL autoencoder (4 latent channels), without attention outside the middle blocks."""
    s = _Shapes()
    ch, mult = spec.vae_ch, spec.vae_mult
    e = f"{prefix}encoder"
    s.conv(f"{e}.conv_in", ch, 3)
    cin = ch
    for level, m in enumerate(mult):
        for b in range(blocks):
            _vae_resblock(s, f"{e}.down.{level}.block.{b}", cin, ch * m)
            cin = ch * m
        if level != len(mult) - 1:
            s.conv(f"{e}.down.{level}.downsample.conv", cin, cin)
    _vae_mid(s, f"{e}.mid", cin)
    s.norm(f"{e}.norm_out", cin)
    s.conv(f"{e}.conv_out", 8, cin)
    d = f"{prefix}decoder"
    cin = ch * mult[-1]
    s.conv(f"{d}.conv_in", cin, 4)
    _vae_mid(s, f"{d}.mid", cin)
    for level in reversed(range(len(mult))):
        for b in range(blocks + 1):
            _vae_resblock(s, f"{d}.up.{level}.block.{b}", cin, ch * mult[level])
            cin = ch * mult[level]
        if level:
            s.conv(f"{d}.up.{level}.upsample.conv", cin, cin)
    s.norm(f"{d}.norm_out", cin)
    s.conv(f"{d}.conv_out", 3, cin)
    s.conv(f"{prefix}quant_conv", 8, 8, 1)
    s.conv(f"{prefix}post_quant_conv", 4, 4, 1)
    return s


def clip_l_shapes(spec: Spec = SPEC, prefix: str = "conditioner.embedders.0.transformer.text_model.") -> _Shapes:
    """transformers' ``CLIPTextModel`` (what sgm's ``FrozenCLIPEmbedder`` wraps)."""
    s = _Shapes()
    w = spec.clip_l_width
    s.add(f"{prefix}embeddings.token_embedding.weight", (VOCAB_SIZE, w), "embedding")
    s.add(f"{prefix}embeddings.position_embedding.weight", (spec.context_length, w), "position")
    s.add(f"{prefix}embeddings.position_ids", (1, spec.context_length), "position_ids")
    for i in range(spec.clip_l_layers):
        layer = f"{prefix}encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s.linear(f"{layer}.self_attn.{proj}", w, w)
        s.norm(f"{layer}.layer_norm1", w)
        s.linear(f"{layer}.mlp.fc1", 4 * w, w)
        s.linear(f"{layer}.mlp.fc2", w, 4 * w)
        s.norm(f"{layer}.layer_norm2", w)
    s.norm(f"{prefix}final_layer_norm", w)
    return s


def open_clip_shapes(spec: Spec = SPEC, prefix: str = "conditioner.embedders.1.model.") -> _Shapes:
    """open_clip's text tower (``CLIP`` without ``visual``, as ``FrozenOpenCLIPEmbedder2`` keeps it)."""
    s = _Shapes()
    w = spec.bigg_width
    s.add(f"{prefix}positional_embedding", (spec.context_length, w), "position")
    s.add(f"{prefix}text_projection", (w, spec.pooled), "projection")
    s.add(f"{prefix}logit_scale", (), "logit_scale")
    s.add(f"{prefix}token_embedding.weight", (VOCAB_SIZE, w), "embedding")
    for i in range(spec.bigg_layers):
        block = f"{prefix}transformer.resblocks.{i}"
        s.norm(f"{block}.ln_1", w)
        s.add(f"{block}.attn.in_proj_weight", (3 * w, w), "weight")
        s.add(f"{block}.attn.in_proj_bias", (3 * w,), "bias")
        s.linear(f"{block}.attn.out_proj", w, w)
        s.norm(f"{block}.ln_2", w)
        s.linear(f"{block}.mlp.c_fc", 4 * w, w)
        s.linear(f"{block}.mlp.c_proj", w, 4 * w)
    s.norm(f"{prefix}ln_final", w)
    return s


def checkpoint_shapes(spec: Spec = SPEC) -> _Shapes:
    s = _Shapes()
    for part in (unet_shapes(spec), vae_shapes(spec), clip_l_shapes(spec), open_clip_shapes(spec)):
        for key, (shape, init) in part.items.items():
            s.add(key, shape, init)
    return s


def random_state_dict(shapes: _Shapes, seed: int = 0) -> dict:
    """Random tensors: weights N(0, 1/fan_in), so activations keep their scale through the layers
    without any layer being zero; norm affines 1±0.1 and 0±0.1; CLIP-like embedding scales."""
    import math

    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, init) in shapes.items.items():
        if init == "position_ids":
            out[key] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
            continue
        if init == "logit_scale":
            out[key] = torch.tensor(math.log(1 / 0.07))
            continue
        t = torch.randn(shape, generator=gen)
        if init == "weight":
            t = t / math.sqrt(math.prod(shape[1:]))
        elif init == "norm_weight":
            t = 1 + 0.1 * t
        elif init in ("bias", "bias_norm"):
            t = (0.1 if init == "bias_norm" else 0.02) * t
        elif init == "embedding":
            t = 0.02 * t
        elif init == "position":
            t = 0.01 * t
        elif init == "projection":
            t = t / math.sqrt(shape[0])
        else:  # pragma: no cover - a typo in a shape table
            raise ValueError(f"{key}: unknown init {init!r}")
        out[key] = t.contiguous()
    return out
