"""A tiny random SDXL for the end-to-end suite: checkpoint, yaml, text-encoder configs, adapter.

A1111 builds an SDXL model from the ``.yaml`` beside its checkpoint (sgm's ``DiffusionEngine``),
so a checkpoint with SDXL's topology and tiny widths loads, samples and decodes like a real one
(a 64×64 step of the UNet takes about 35 ms on one idle CPU core). What :func:`write_tiny_sdxl`
writes (deterministic: fixed seeds):

``models/Stable-diffusion/e2e-tiny-sdxl.safetensors``
    Real SDXL key names and block structure: ``model.diffusion_model.*`` with SDXL's three levels
    (32, 32 and 64 channels here; SDXL: 320, 640, 1280), two res blocks per level, no attention at
    the first level and SDXL's transformer depths at the others (2 and 10, and 10 in the middle
    block), so the UNet has SDXL's 70 cross-attention layers; ``conditioner.embedders.0`` a 32-wide CLIP-L-style
    transformers text model, ``conditioner.embedders.1`` a 64-wide open_clip text tower
    (context width 32 + 64 = 96, pooled width 64, ``adm_in_channels`` 64 + 6·256);
    ``first_stage_model`` a small VAE (factor 8). Norm affines are 1±0.1 / 0±0.1 and no layer is
    zero: random text encoders with default affines give NaN in A1111's emphasis step.
``models/Stable-diffusion/e2e-tiny-sdxl.yaml``
    The sgm config (written as JSON, which YAML reads).
``models/e2e-tiny-sdxl-clip-l/``
    ``config.json`` of embedders.0 and the real CLIP BPE tokenizer (``vocab.json``/``merges.txt``
    built from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` in the WebUI's environment), so
    ``CLIPTokenizer.from_pretrained`` works offline; A1111 takes the weights from the checkpoint.
``<WebUI's open_clip>/model_configs/e2e-tiny-sdxl-bigg.json``
    open_clip builds embedders.1 from a registered architecture name; this file registers the
    tiny one (``version: null`` in the yaml, so nothing is downloaded).
``models/ipadapter/e2e-tiny-sdxl-base.safetensors``
    A random "base" (image-embeds) IP-Adapter sized to the checkpoint's 70 attn2 layers. It fits
    the session's tiny CLIP vision encoder (``e2e-tiny-clip``, 40-wide image embeds), which
    :func:`~tests.e2e.webui.write_tiny_models` writes; no second encoder is needed.

Live previews: on its first SDXL generation A1111 loads (and, when absent, downloads)
``VAE-approx/vaeapprox-sdxl.pt``. Offline that fails, so the SDXL tests turn live previews off
per request (``override_settings: {"live_previews_enable": false}``) instead of writing a file
into the install's ``VAE-approx`` folder.

When: ``WEBUI_E2E_SDXL=1`` writes the files, ``0`` never does; unset (the default) writes them
for an A1111 install and not for Forge, whose loader takes SDXL's text-encoder sizes from its
bundled Hugging Face configs and cannot load a tiny one. Writing takes about a second. Only in
``WEBUI_ROOT`` mode; everything written is listed for removal after the session (kept with
``WEBUI_E2E_KEEP=1``; a later run then finds two checkpoints and needs ``WEBUI_CKPT``).

Torch and safetensors are imported only when writing, as in :mod:`tests.e2e.webui`.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_FILE = "e2e-tiny-sdxl.safetensors"
ADAPTER_FILE = "e2e-tiny-sdxl-base.safetensors"
TOKENIZER_DIR = "e2e-tiny-sdxl-clip-l"
OPEN_CLIP_ARCH = "e2e-tiny-sdxl-bigg"
ENV = "WEBUI_E2E_SDXL"

#: CLIP's byte-pair tokenizer: 256 byte symbols, the same with an end-of-word mark, the merges,
#: then the two special tokens.
VOCAB_SIZE = 49408
N_MERGES = VOCAB_SIZE - 2 * 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class Spec:
    """The sizes of the tiny SDXL. SDXL itself: 320 channels × (1, 2, 4), 64-wide heads, a 768-wide
    CLIP-L and a 1280-wide OpenCLIP bigG (context 2048, pooled 1280)."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 1, 2)
    res_blocks: int = 2
    depths: tuple[int, ...] = (0, 2, 10)  # transformer depth per level (0: no attention), as SDXL
    head_channels: int = 16
    clip_l_width: int = 32
    clip_l_layers: int = 3
    clip_l_heads: int = 2
    bigg_width: int = 64
    bigg_layers: int = 3
    bigg_heads: int = 4
    pooled: int = 64
    vae_ch: int = 32
    vae_mult: tuple[int, ...] = (1, 2, 2, 2)
    context_length: int = 77

    @property
    def context_dim(self) -> int:
        return self.clip_l_width + self.bigg_width

    @property
    def adm_in_channels(self) -> int:
        return self.pooled + 3 * 2 * 256  # pooled text + original size, crop, target size (2×256 each)

    @property
    def time_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def attention_resolutions(self) -> list[int]:
        return [2**level for level, depth in enumerate(self.depths) if depth]


SPEC = Spec()


@dataclass
class SdxlFiles:
    """What :func:`write_tiny_sdxl` wrote (file names as the server lists them)."""

    checkpoint: str = CHECKPOINT_FILE
    adapter: str = ADAPTER_FILE


# ------------------------------------------------------------------------------------------- when


def is_forge(root: Path) -> bool:
    return (root / "modules_forge").is_dir() or (root / "backend" / "loader.py").is_file()


def wanted(root: Path) -> tuple[bool, str]:
    """(write the SDXL files?, why not) from ``WEBUI_E2E_SDXL`` and the kind of install."""
    value = os.environ.get(ENV, "").strip()
    if value == "0":
        return False, f"{ENV}=0"
    if value == "1":
        return True, ""
    if value:
        raise ValueError(f"{ENV}={value!r}: use 1 (write the tiny SDXL), 0 (don't) or leave it unset (auto)")
    if is_forge(root):
        return (
            False,
            f"Forge cannot load the tiny SDXL (its text-encoder sizes come from bundled configs); {ENV}=1 forces it",
        )
    return True, ""


# ------------------------------------------------------------------------------------ tensor shapes


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


# --------------------------------------------------------------------------------------- the config


def sdxl_config(spec: Spec, clip_l_dir: Path) -> dict:
    """SDXL base's inference yaml (generative-models ``sd_xl_base.yaml``) with the tiny sizes."""
    size_embedder = {
        "is_trainable": False,
        "target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
        "params": {"outdim": 256},
    }
    return {
        "model": {
            "target": "sgm.models.diffusion.DiffusionEngine",
            "params": {
                "scale_factor": 0.13025,
                "disable_first_stage_autocast": True,
                "denoiser_config": {
                    "target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser",
                    "params": {
                        "num_idx": 1000,
                        "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
                        "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
                        "discretization_config": {
                            "target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"
                        },
                    },
                },
                "network_config": {
                    "target": "sgm.modules.diffusionmodules.openaimodel.UNetModel",
                    "params": {
                        "adm_in_channels": spec.adm_in_channels,
                        "num_classes": "sequential",
                        "use_checkpoint": False,
                        "in_channels": 4,
                        "out_channels": 4,
                        "model_channels": spec.model_channels,
                        "attention_resolutions": spec.attention_resolutions,
                        "num_res_blocks": spec.res_blocks,
                        "channel_mult": list(spec.channel_mult),
                        "num_head_channels": spec.head_channels,
                        "use_spatial_transformer": True,
                        "use_linear_in_transformer": True,
                        "transformer_depth": [max(d, 1) for d in spec.depths],  # a level without attention ignores it
                        "context_dim": spec.context_dim,
                        "spatial_transformer_attn_type": "softmax-xformers",
                        "legacy": False,
                    },
                },
                "conditioner_config": {
                    "target": "sgm.modules.GeneralConditioner",
                    "params": {
                        "emb_models": [
                            {
                                "is_trainable": False,
                                "input_key": "txt",
                                "target": "sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                                # SDXL takes CLIP-L's penultimate hidden state (layer_idx 11 of 12)
                                "params": {
                                    "version": str(clip_l_dir),
                                    "layer": "hidden",
                                    "layer_idx": spec.clip_l_layers - 1,
                                },
                            },
                            {
                                "is_trainable": False,
                                "input_key": "txt",
                                "target": "sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                                "params": {
                                    "arch": OPEN_CLIP_ARCH,
                                    "version": None,
                                    "freeze": True,
                                    "layer": "penultimate",
                                    "always_return_pooled": True,
                                    "legacy": False,
                                },
                            },
                            {**size_embedder, "input_key": "original_size_as_tuple"},
                            {**size_embedder, "input_key": "crop_coords_top_left"},
                            {**size_embedder, "input_key": "target_size_as_tuple"},
                        ]
                    },
                },
                "first_stage_config": {
                    "target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper",
                    "params": {
                        "embed_dim": 4,
                        "monitor": "val/rec_loss",
                        "ddconfig": {
                            "attn_type": "vanilla-xformers",
                            "double_z": True,
                            "z_channels": 4,
                            "resolution": 256,
                            "in_channels": 3,
                            "out_ch": 3,
                            "ch": spec.vae_ch,
                            "ch_mult": list(spec.vae_mult),
                            "num_res_blocks": 1,
                            "attn_resolutions": [],
                            "dropout": 0.0,
                        },
                        "lossconfig": {"target": "torch.nn.Identity"},
                    },
                },
            },
        }
    }


def open_clip_config(spec: Spec) -> dict:
    """open_clip's model config: the text tower as used, and a minimal vision tower (open_clip
    always builds one; ``FrozenOpenCLIPEmbedder2`` deletes it)."""
    return {
        "embed_dim": spec.pooled,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {
            "context_length": spec.context_length,
            "vocab_size": VOCAB_SIZE,
            "width": spec.bigg_width,
            "heads": spec.bigg_heads,
            "layers": spec.bigg_layers,
        },
    }


def clip_l_config(spec: Spec) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": spec.clip_l_width,
        "intermediate_size": 4 * spec.clip_l_width,
        "projection_dim": spec.clip_l_width,
        "num_hidden_layers": spec.clip_l_layers,
        "num_attention_heads": spec.clip_l_heads,
        "max_position_embeddings": spec.context_length,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": VOCAB_SIZE - 2,
        "eos_token_id": VOCAB_SIZE - 1,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }


# -------------------------------------------------------------------------------------- tokenizer


def _byte_tokens() -> list[str]:
    """CLIP's 256 byte symbols in vocabulary order. The BPE is written in printable characters:
    printable Latin-1 bytes stand for themselves and come first; every other byte (controls,
    space, …) stands for a character from U+0100 on, numbered in byte order, and comes after."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = sorted(set(range(256)) - set(printable))
    return [chr(b) for b in printable] + [chr(0x100 + n) for n in range(len(others))]


def write_tokenizer(folder: Path, bpe_gz: Path) -> list[Path]:
    """``vocab.json``, ``merges.txt`` and the tokenizer configs of CLIP's BPE, from open_clip's copy
    of the merges (``bpe_simple_vocab_16e6.txt.gz``). Returns the files written."""
    with gzip.open(bpe_gz, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 1 + N_MERGES]  # line 0 is a version header
    base = _byte_tokens()
    tokens = base + [t + "</w>" for t in base] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{bpe_gz}: built {len(vocab)} tokens, expected {VOCAB_SIZE}")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2),
        "tokenizer_config.json": json.dumps(
            {
                **special,
                "model_max_length": 77,
                "do_lower_case": True,
                "errors": "replace",
                "add_prefix_space": False,
                "tokenizer_class": "CLIPTokenizer",
            },
            indent=2,
        ),
    }
    written = []
    for name, text in files.items():
        written.append(_write_text(folder / name, text))
    return written


# ---------------------------------------------------------------------------------------- writing


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def find_open_clip(python: str) -> Path:
    """The ``open_clip`` package folder of the WebUI's interpreter (located, not imported)."""
    code = "import importlib.util as u; s = u.find_spec('open_clip'); print(s.origin if s else '')"
    try:
        found = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"cannot ask {python} where open_clip is: {exc}") from exc
    origin = found.stdout.strip()
    if not origin:
        raise RuntimeError(f"{python} has no open_clip package (A1111 needs open-clip-torch for SDXL)")
    return Path(origin).parent


def write_tiny_sdxl(root: Path, python: str, created: list[Path], spec: Spec = SPEC, seed: int = 0) -> SdxlFiles:
    """Write the tiny SDXL, its configs and its adapter (see the module docstring) into the install
    at ``root`` whose interpreter is ``python``. Each path is appended to ``created`` as soon as it
    exists (folders before their files), so a failure half-way still leaves it listed."""
    from safetensors.torch import save_file

    from ipadapter_ext.core.formats import save_adapter_tensors
    from tests.factories import adapter_shapes, adapter_tensors

    from .webui import checkpoint_attn2

    def new_dir(path: Path) -> Path:
        if not path.is_dir():
            path.mkdir(parents=True)
            created.append(path)
        return path

    def atomically(path: Path, write) -> Path:
        tmp = path.with_name(path.name + ".part" + path.suffix)
        write(tmp)
        os.replace(tmp, path)
        created.append(path)
        return path

    open_clip_dir = find_open_clip(python)
    arch_file = open_clip_dir / "model_configs" / f"{OPEN_CLIP_ARCH}.json"
    created.append(_write_text(arch_file, json.dumps(open_clip_config(spec), indent=2)))

    clip_l_dir = new_dir(root / "models" / TOKENIZER_DIR)
    created.extend(write_tokenizer(clip_l_dir, open_clip_dir / "bpe_simple_vocab_16e6.txt.gz"))
    created.append(_write_text(clip_l_dir / "config.json", json.dumps(clip_l_config(spec), indent=2)))

    sd_dir = new_dir(root / "models" / "Stable-diffusion")
    checkpoint = sd_dir / CHECKPOINT_FILE
    yaml_text = json.dumps(sdxl_config(spec, clip_l_dir.resolve()), indent=2)  # JSON is YAML
    created.append(_write_text(checkpoint.with_suffix(".yaml"), yaml_text))
    state = random_state_dict(checkpoint_shapes(spec), seed)
    atomically(checkpoint, lambda tmp: save_file(state, str(tmp)))

    ctx, widths = checkpoint_attn2(checkpoint)
    if (ctx, len(widths)) != (spec.context_dim, 70):
        raise AssertionError(f"{checkpoint.name}: context {ctx} and {len(widths)} attn2 layers; expected SDXL's 70")
    adapter = new_dir(root / "models" / "ipadapter") / ADAPTER_FILE
    tensors = adapter_tensors(adapter_shapes("base", ctx, widths, 40, tokens=4), seed=seed + 1)
    atomically(adapter, lambda tmp: save_adapter_tensors(tensors, tmp))
    return SdxlFiles()
