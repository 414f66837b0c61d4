"""The tiny SDXL's text files: the sgm yaml, the text encoders' configs, CLIP's BPE tokenizer.

Everything here is plain data built from :class:`~tests.e2e.sdxl_spec.Spec` (JSON, which YAML
reads); :mod:`tests.e2e.sdxl` decides where each file goes.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from .sdxl_spec import OPEN_CLIP_ARCH, VOCAB_SIZE, Spec

#: the merges in CLIP's vocabulary (see VOCAB_SIZE), and its two special tokens
N_MERGES = VOCAB_SIZE - 2 * 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


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
        written.append(write_text(folder / name, text))
    return written


# ---------------------------------------------------------------------------------------- writing


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a ``.part`` file, so a reader never sees half of it."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
