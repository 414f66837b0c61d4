"""CLIP vision encoders from one file, config inferred from shapes, checked against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from ipadapter_ext.core.encode.encoder import ClipVisionEncoder, infer_clip_spec
from ipadapter_ext.core.encode.preprocess import CropMode, pixel_values, prepare_image
from ipadapter_ext.core.errors import ModelFileError

TINY = dict(
    hidden_size=128,
    intermediate_size=96,
    projection_dim=40,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=224,
    patch_size=32,
    hidden_act="gelu",
)  # OpenCLIP encoders use gelu


def _tiny_model(seed: int = 0, **overrides) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # non-trivial LayerNorm affines so that every tensor matters
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _save(model, path, with_projection: bool = True):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if with_projection or not k.startswith("visual_projection")}
    save_file(state, str(path))


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("with_projection", [True, False])
def test_encoder_from_file_equals_transformers(tmp_path, with_projection):
    model = _tiny_model()
    path = tmp_path / "clip_vision_tiny.safetensors"
    _save(model, path, with_projection)
    enc = ClipVisionEncoder.from_file(path)
    assert enc.spec.hidden_size == 128 and enc.spec.num_layers == 3 and enc.spec.patch_size == 32
    assert enc.spec.image_size == 224 and enc.spec.intermediate_size == 96 and enc.spec.num_heads == 2
    assert enc.spec.projection_dim == (40 if with_projection else None)
    pixels = torch.randn(2, 3, 224, 224)
    got = enc.encode(pixels)
    with torch.no_grad():
        ref = model(pixel_values=pixels, output_hidden_states=True)
    # Two model instances (ours rebuilt from the file's tensors, stored elsewhere in memory): equal
    # to rounding. Values are a few units; a wrong config or tensor is off by far more.
    torch.testing.assert_close(got.hidden, ref.hidden_states[-2], rtol=1e-5, atol=1e-5)
    if with_projection:
        torch.testing.assert_close(got.image_embeds, ref.image_embeds, rtol=1e-5, atol=1e-5)
    else:
        assert got.image_embeds is None


def test_uncond_hidden_is_encoder_on_zero_normalised_pixels(tmp_path):
    model = _tiny_model(seed=1)
    path = tmp_path / "enc.safetensors"
    _save(model, path)
    enc = ClipVisionEncoder.from_file(path)
    with torch.no_grad():
        ref = model(pixel_values=torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(enc.uncond_hidden(), ref, rtol=1e-5, atol=1e-5)  # as above: another instance
    assert enc.uncond_hidden() is enc.uncond_hidden()  # computed once


def test_full_clip_file_with_text_tower_loads(tmp_path):
    model = _tiny_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    state["text_projection.weight"] = torch.zeros(8, 8)
    save_file(state, str(tmp_path / "clip.safetensors"))
    enc = ClipVisionEncoder.from_file(tmp_path / "clip.safetensors")
    assert enc.spec.hidden_size == 128


def _vision_shapes(hidden, layers, patch, image, mlp, proj):
    shapes = {
        "vision_model.embeddings.class_embedding": (hidden,),
        "vision_model.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": ((image // patch) ** 2 + 1, hidden),
    }
    for i in range(layers):
        shapes[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = (mlp, hidden)
    if proj:
        shapes["visual_projection.weight"] = (proj, hidden)
    return shapes


@pytest.mark.parametrize(
    "shapes,name,heads,act,tokens",
    [
        (_vision_shapes(1280, 32, 14, 224, 5120, 1024), "ViT-H/14", 16, "gelu", 257),
        (_vision_shapes(1664, 48, 14, 224, 8192, 1280), "ViT-bigG/14", 16, "gelu", 257),
        (_vision_shapes(1024, 24, 14, 336, 4096, 768), "ViT-L/14", 16, "quick_gelu", 577),
        (_vision_shapes(256, 4, 16, 64, 512, None), None, 4, "gelu", 17),
    ],
)
def test_spec_inference_for_real_encoders(shapes, name, heads, act, tokens):
    spec = infer_clip_spec(shapes)
    assert spec.name == name and spec.num_heads == heads and spec.hidden_act == act and spec.num_tokens == tokens


def test_not_an_encoder_is_named():
    with pytest.raises(ModelFileError, match="looks like a Stable Diffusion checkpoint"):
        infer_clip_spec({"model.diffusion_model.out.0.weight": (4,)}, "x.safetensors")
    with pytest.raises(ModelFileError, match="OpenCLIP-format"):
        infer_clip_spec({"visual.conv1.weight": (1280, 3, 14, 14)}, "x.safetensors")


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (300, 901), (225, 224), (97, 53), (1024, 1023)])
def test_center_crop_equals_clip_image_processor(size):
    image = _image(*size, seed=sum(size))
    expected = CLIPImageProcessor()(images=[image], return_tensors="pt")["pixel_values"]
    got = pixel_values([image], 224, CropMode.CENTER)
    assert got.shape == expected.shape == (1, 3, 224, 224)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_rgba_and_grey_inputs_are_converted():
    rgba = _image(300, 200).convert("RGBA")
    grey = _image(300, 200).convert("L")
    for image in (rgba, grey, np.asarray(_image(30, 20))):
        assert pixel_values([image]).shape == (1, 3, 224, 224)


def test_crop_modes_pick_the_right_region():
    # A tall image: top half red, bottom half blue. A wide one: left green, right white.
    tall = Image.new("RGB", (100, 400), (255, 0, 0))
    tall.paste((0, 0, 255), (0, 200, 100, 400))
    wide = Image.new("RGB", (400, 100), (0, 255, 0))
    wide.paste((255, 255, 255), (200, 0, 400, 100))
    assert prepare_image(tall, 32, "top").getpixel((16, 16)) == (255, 0, 0)
    assert prepare_image(tall, 32, "bottom").getpixel((16, 16)) == (0, 0, 255)
    assert prepare_image(wide, 32, "left").getpixel((16, 16)) == (0, 255, 0)
    assert prepare_image(wide, 32, "right").getpixel((16, 16)) == (255, 255, 255)
    padded = prepare_image(wide, 32, "pad")
    assert padded.size == (32, 32)
    assert padded.getpixel((16, 0)) == (123, 117, 104)  # letterbox in the CLIP mean colour
    squashed = prepare_image(tall, 32, "squash")
    assert squashed.getpixel((16, 2)) == (255, 0, 0) and squashed.getpixel((16, 29)) == (0, 0, 255)
    # pad keeps everything: both halves of the wide image survive
    assert padded.getpixel((2, 16))[1] == 255 and padded.getpixel((29, 16)) == (255, 255, 255)
