"""Detection from tensor shapes alone, on the real shapes of every published variant."""

from __future__ import annotations

import pytest

from ipadapter_ext.core.errors import ModelFileError
from ipadapter_ext.core.load.detect import EncoderOutput, ProjectionKind, detect_adapter
from tests.factories import SD15_WIDTHS, SDXL_WIDTHS, adapter_shapes, ip_layers, tiny_widths

SD15 = (768, SD15_WIDTHS)
SDXL = (2048, SDXL_WIDTHS)


def _shapes(kind, base, enc, **kw):
    ctx, widths = base
    return adapter_shapes(kind, ctx, widths, enc, **kw)


# (file name, shapes, variant, kind, description)
CASES = [
    (
        "ip-adapter_sd15.safetensors",
        _shapes("base", SD15, 1024),
        "base",
        ProjectionKind.IMAGE,
        "IP-Adapter · SD1.5 · 4 tokens · needs CLIP ViT-H/14",
    ),
    (
        "ip-adapter_sd15_light_v11.bin",
        _shapes("base", SD15, 1024),
        "light",
        ProjectionKind.IMAGE,
        "IP-Adapter Light · SD1.5 · 4 tokens · needs CLIP ViT-H/14"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip-adapter_sd15_vit-G.safetensors",
        _shapes("base", SD15, 1280),
        "base",
        ProjectionKind.IMAGE,
        "IP-Adapter · SD1.5 · 4 tokens · needs CLIP ViT-bigG/14",
    ),
    (
        "ip-adapter-plus_sd15.safetensors",
        _shapes("resampler", SD15, 1280, tokens=16, inner=768),
        "plus",
        ProjectionKind.RESAMPLER,
        "IP-Adapter Plus · SD1.5 · 16 tokens · needs CLIP ViT-H/14",
    ),
    (
        "ip-adapter-plus-face_sd15.safetensors",
        _shapes("resampler", SD15, 1280, tokens=16, inner=768),
        "plus-face",
        ProjectionKind.RESAMPLER,
        "IP-Adapter Plus Face · SD1.5 · 16 tokens · needs CLIP ViT-H/14"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip-adapter-full-face_sd15.safetensors",
        _shapes("full", SD15, 1280),
        "full-face",
        ProjectionKind.FULL,
        "IP-Adapter Full Face · SD1.5 · 257 tokens · needs CLIP ViT-H/14",
    ),
    (
        "ip-adapter_sdxl.safetensors",
        _shapes("base", SDXL, 1280),
        "base",
        ProjectionKind.IMAGE,
        "IP-Adapter · SDXL · 4 tokens · needs CLIP ViT-bigG/14",
    ),
    (
        "ip-adapter_sdxl_vit-h.safetensors",
        _shapes("base", SDXL, 1024),
        "base",
        ProjectionKind.IMAGE,
        "IP-Adapter · SDXL · 4 tokens · needs CLIP ViT-H/14",
    ),
    (
        "ip-adapter-plus_sdxl_vit-h.safetensors",
        _shapes("resampler", SDXL, 1280, tokens=16, res_dim=1280, inner=1280),
        "plus",
        ProjectionKind.RESAMPLER,
        "IP-Adapter Plus · SDXL · 16 tokens · needs CLIP ViT-H/14",
    ),
    (
        "ip-adapter-plus-face_sdxl_vit-h.safetensors",
        _shapes("resampler", SDXL, 1280, tokens=16, res_dim=1280, inner=1280),
        "plus-face",
        ProjectionKind.RESAMPLER,
        "IP-Adapter Plus Face · SDXL · 16 tokens · needs CLIP ViT-H/14"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip-adapter-faceid_sd15.bin",
        _shapes("faceid", SD15, 0, lora_rank=128),
        "faceid",
        ProjectionKind.FACEID,
        "IP-Adapter FaceID · SD1.5 · 4 tokens · needs a face embedding (insightface)",
    ),
    (
        "ip-adapter-faceid_sdxl.bin",
        _shapes("faceid", SDXL, 0, lora_rank=128),
        "faceid",
        ProjectionKind.FACEID,
        "IP-Adapter FaceID · SDXL · 4 tokens · needs a face embedding (insightface)",
    ),
    (
        "ip-adapter-faceid-plus_sd15.bin",
        _shapes("faceid_plus", SD15, 1280, lora_rank=128, inner=768),
        "faceid-plus",
        ProjectionKind.FACEID_PLUS,
        "IP-Adapter FaceID Plus · SD1.5 · 4 tokens · needs a face embedding (insightface) + CLIP ViT-H/14",
    ),
    (
        "ip-adapter-faceid-plusv2_sd15.bin",
        _shapes("faceid_plus", SD15, 1280, lora_rank=128, inner=768),
        "faceid-plusv2",
        ProjectionKind.FACEID_PLUS,
        "IP-Adapter FaceID Plus v2 · SD1.5 · 4 tokens · needs a face embedding (insightface) + CLIP ViT-H/14"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip-adapter-faceid-plusv2_sdxl.bin",
        _shapes("faceid_plus", SDXL, 1280, lora_rank=128, inner=2048),
        "faceid-plusv2",
        ProjectionKind.FACEID_PLUS,
        "IP-Adapter FaceID Plus v2 · SDXL · 4 tokens · needs a face embedding (insightface) + CLIP ViT-H/14"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip-adapter-faceid-portrait-v11_sd15.bin",
        _shapes("faceid", SD15, 0, tokens=16),
        "portrait",
        ProjectionKind.PORTRAIT,
        "IP-Adapter FaceID Portrait · SD1.5 · 16 tokens · needs a face embedding (insightface)",
    ),
    (
        "ip-adapter-faceid-portrait_sdxl.bin",
        _shapes("faceid", SDXL, 0, tokens=16),
        "portrait",
        ProjectionKind.PORTRAIT,
        "IP-Adapter FaceID Portrait · SDXL · 16 tokens · needs a face embedding (insightface)",
    ),
    (
        "ip-adapter-faceid-portrait_sdxl_unnorm.bin",
        _shapes("resampler", SDXL, 512, tokens=16, res_dim=1280, inner=1280),
        "portrait-unnorm",
        ProjectionKind.RESAMPLER,
        "IP-Adapter FaceID Portrait (unnorm) · SDXL · 16 tokens · needs a face embedding (insightface)"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (  # ostris' composition adapters: laid out as Plus with ViT-H; only the name tells
        "ip_plus_composition_sd15.safetensors",
        _shapes("resampler", SD15, 1280, tokens=16, inner=768),
        "plus-composition",
        ProjectionKind.RESAMPLER,
        "IP Composition Adapter (ostris) · SD1.5 · 16 tokens · needs CLIP ViT-H/14 · composition adapter: transfers "
        "the layout, not the style or content"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "ip_plus_composition_sdxl.safetensors",
        _shapes("resampler", SDXL, 1280, tokens=16, inner=1280),
        "plus-composition",
        ProjectionKind.RESAMPLER,
        "IP Composition Adapter (ostris) · SDXL · 16 tokens · needs CLIP ViT-H/14 · composition adapter: transfers "
        "the layout, not the style or content"
        " · variant told by the file name (its tensors alone fit other variants too)",
    ),
    (
        "some-16-token-base.safetensors",
        _shapes("base", SD15, 1024, tokens=16),
        "base",
        ProjectionKind.IMAGE,
        "IP-Adapter · SD1.5 · 16 tokens · needs CLIP ViT-H/14",
    ),
]


@pytest.mark.parametrize("filename,shapes,variant,kind,description", CASES, ids=[c[0] for c in CASES])
def test_variant_table(filename, shapes, variant, kind, description):
    info = detect_adapter(shapes, filename)
    assert info.variant == variant
    assert info.kind is kind
    assert info.describe() == description
    assert info.num_layers in (16, 70)
    assert info.layer_widths == (SD15_WIDTHS if info.num_layers == 16 else SDXL_WIDTHS)


def test_hidden_state_choice_and_shortcut():
    plus = detect_adapter(_shapes("resampler", SD15, 1280, tokens=16, inner=768), "x.bin")
    base = detect_adapter(_shapes("base", SD15, 1024), "x.bin")
    v2 = detect_adapter(_shapes("faceid_plus", SD15, 1280, lora_rank=128, inner=768), "faceid-plusv2.bin")
    v1 = detect_adapter(_shapes("faceid_plus", SD15, 1280, lora_rank=128, inner=768), "faceid-plus.bin")
    assert plus.encoder.output is EncoderOutput.PENULTIMATE
    assert base.encoder.output is EncoderOutput.IMAGE_EMBEDS
    assert v2.shortcut and not v1.shortcut
    assert v1.has_lora and not base.has_lora
    assert plus.params["heads"] == 12 and plus.params["depth"] == 4


def test_name_does_not_decide_when_tensors_can():
    # A plus model named like a base model is still a plus model.
    info = detect_adapter(_shapes("resampler", SD15, 1280, tokens=16, inner=768), "ip-adapter_sd15.safetensors")
    assert info.variant == "plus"
    # "face" in the name of a base model changes nothing: base has no face variant.
    assert detect_adapter(_shapes("base", SD15, 1024), "my-face-model.bin").variant == "base"


def test_override_wins_and_is_checked():
    shapes = _shapes("resampler", SD15, 1280, tokens=16, inner=768)
    assert detect_adapter(shapes, "plus.bin", override="plus-face").variant == "plus-face"
    assert detect_adapter(shapes, "ip-adapter-plus-face.bin", override="plus").variant == "plus"
    with pytest.raises(ModelFileError, match="cannot be 'faceid'.*Variants that fit this file"):
        detect_adapter(shapes, "plus.bin", override="faceid")
    with pytest.raises(ModelFileError, match="unknown variant override"):
        detect_adapter(shapes, "plus.bin", override="bogus")


def test_generalises_to_tiny_widths():
    shapes = adapter_shapes("resampler", 32, tiny_widths(SD15_WIDTHS), 48, tokens=8, inner=64)
    info = detect_adapter(shapes, "tiny.safetensors")
    assert info.family == "SD1.5-shaped (context 32)"
    assert info.tokens == 8
    assert info.layer_widths == tiny_widths(SD15_WIDTHS)
    assert info.describe() == (
        "IP-Adapter Plus · SD1.5-shaped (context 32) · 8 tokens · needs a CLIP vision encoder with 48-wide hidden states"
    )


def test_adapter_modules_prefix_is_accepted():
    shapes = _shapes("base", SD15, 1024)
    renamed = {k.replace("ip_adapter.", "adapter_modules."): v for k, v in shapes.items()}
    assert detect_adapter(renamed, "comfy.safetensors").describe() == detect_adapter(shapes, "x").describe()


def image_proj_only():
    return {"image_proj.proj.weight": (3072, 1024), "image_proj.norm.weight": (768,)}


@pytest.mark.parametrize(
    "shapes,message",
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "looks like a Stable Diffusion checkpoint"),
        ({"vision_model.embeddings.class_embedding": (1280,)}, "looks like a CLIP vision encoder"),
        ({"image_proj.proj.weight": (3072, 1024), "image_proj.norm.weight": (768,)}, "no 'to_k_ip' weights"),
        ({**ip_layers(768, SD15_WIDTHS), "image_proj.mystery.weight": (4, 4)}, "unknown image projection"),
        (
            {**image_proj_only(), "ip_adapter.1.to_k_ip.weight": (320, 768), "ip_adapter.5.to_k_ip.weight": (320, 768)},
            "not the odd numbers",
        ),
    ],
)
def test_not_an_adapter_is_named(shapes, message):
    with pytest.raises(ModelFileError, match=message):
        detect_adapter(shapes, "file.safetensors")


def test_kolors_resampler_is_rejected_in_words():
    shapes = adapter_shapes("resampler", 4096, (1280,) * 70, 1024, tokens=16, res_dim=1280, inner=1280)
    shapes = {k: ((2048, 1280) if k.endswith("proj_out.weight") else v) for k, v in shapes.items()}
    with pytest.raises(ModelFileError, match="Kolors"):
        detect_adapter(shapes, "kolors.bin")


def test_the_composition_adapter_is_told_only_by_its_name():
    """ostris' ip_plus_composition files have Plus's tensors: renamed, they are Plus (and say nothing of
    a name); the override names it explicitly without the file-name note."""
    shapes = _shapes("resampler", SD15, 1280, tokens=16, inner=768)
    renamed = detect_adapter(shapes, "mystery.safetensors")
    assert renamed.variant == "plus" and not renamed.by_name and "file name" not in renamed.describe()
    chosen = detect_adapter(shapes, "mystery.safetensors", override="plus-composition")
    assert chosen.variant == "plus-composition" and not chosen.by_name
    assert "composition adapter" in chosen.describe() and "file name" not in chosen.describe()
    named = detect_adapter(shapes, "IP_Plus_Composition_SD15.safetensors")
    assert named.by_name and named.name == "IP Composition Adapter (ostris)"
