"""SigLIP vision encoders from one file, config from shapes, equal to transformers' SiglipVisionModel
and SiglipImageProcessor.

transformers has SigLIP from 4.37: the oracle tests run in ``.venv-tf-latest`` (``tests/run.sh``'s
compatibility pass runs this file there) and skip in the main venv, whose 4.30.2 (A1111's pin)
has none. There the product's own answer to an old transformers is tested instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.core.encode.encoder import infer_encoder_spec, load_encoder
from ipadapter_ext.core.encode.preprocess import SIGLIP_MEAN, SIGLIP_STD, pixel_values
from ipadapter_ext.core.encode.references import encode_references
from ipadapter_ext.core.encode.siglip import SiglipVisionEncoder, SiglipVisionSpec, infer_siglip_spec
from ipadapter_ext.core.errors import EncoderError, IncompatibleModelError
from ipadapter_ext.core.load.compat import check_encoder
from ipadapter_ext.core.load.detect import detect_adapter
from ipadapter_ext.core.load.registry import ModelRegistry
from tests.siglip_env import save_siglip, siglip_tensors

try:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel
except ImportError:
    SiglipVisionModel = None

needs_siglip = pytest.mark.skipif(
    SiglipVisionModel is None,
    reason="transformers has SiglipVisionModel from 4.37; this venv has an older one (A1111's 4.30.2). "
    "tests/run.sh runs this file again in .venv-tf-latest",
)


def _shapes(flat: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in flat.items()}


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# -- shapes (no transformers needed) ---------------------------------------------------------------
def test_spec_of_so400m_from_its_shapes():
    shapes = {
        "vision_model.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
        "vision_model.embeddings.position_embedding.weight": (729, 1152),
        **{f"vision_model.encoder.layers.{i}.mlp.fc1.weight": (4304, 1152) for i in range(27)},
        "vision_model.post_layernorm.weight": (1152,),
        "vision_model.head.probe": (1, 1, 1152),
        "text_model.embeddings.token_embedding.weight": (32000, 1152),
    }
    spec = infer_encoder_spec(shapes, "siglip-so400m-patch14-384.safetensors")
    assert isinstance(spec, SiglipVisionSpec)
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.intermediate_size) == (1152, 27, 16, 4304)
    assert (spec.image_size, spec.patch_size, spec.num_tokens, spec.pooled) == (384, 14, 729, True)
    assert spec.describe() == "SigLIP so400m · 27 layers · 384 px · 729 tokens · pooled 1152"


def test_tiny_spec_and_the_file_without_prefix_or_head():
    spec = infer_siglip_spec(_shapes(siglip_tensors()))
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.image_size, spec.num_tokens) == (128, 3, 2, 56, 16)
    bare = infer_siglip_spec(_shapes(siglip_tensors(prefix="", head=False, text_tower=False)))
    assert bare.pooled is False and bare.image_size == 56


def test_registry_lists_siglip_beside_clip(tmp_path):
    from tests.test_encoder import _save, _tiny_model

    save_siglip(tmp_path / "clip_vision" / "siglip-tiny.safetensors")
    _save(_tiny_model(), tmp_path / "clip_vision" / "clip-tiny.safetensors")
    encoders = {e.name: e for e in ModelRegistry([], [tmp_path / "clip_vision"]).encoders()}
    assert encoders["siglip-tiny"].spec.family == "siglip" and encoders["clip-tiny"].spec.family == "clip"
    assert encoders["siglip-tiny"].description == "SigLIP vision (128 wide) · 3 layers · 56 px · 16 tokens · pooled 128"


def test_a_siglip_adapter_refuses_a_clip_encoder_naming_the_one_it_needs():
    from tests.flux_env import instantx_tensors
    from tests.test_encoder import TINY

    info = detect_adapter(_shapes(instantx_tensors(embed=1152)), "ip-adapter.bin")
    clip = infer_encoder_spec(
        {
            "vision_model.embeddings.class_embedding": (1024,),
            "vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
            "vision_model.embeddings.position_embedding.weight": (257, 1024),
            **{f"vision_model.encoder.layers.{i}.mlp.fc1.weight": (4096, 1024) for i in range(24)},
            "visual_projection.weight": (768, 1024),
        }
    )
    with pytest.raises(
        IncompatibleModelError, match=r"cannot use 'clip_vision_l': it is a CLIP encoder .*needs SigLIP so400m"
    ):
        check_encoder(info, clip, "'ip-adapter'", "clip_vision_l")
    siglip = infer_siglip_spec(_shapes(siglip_tensors(hidden=1152, layers=1, intermediate=8, image=28)))
    check_encoder(info, siglip)  # the width and the pooling head fit
    headless = infer_siglip_spec(_shapes(siglip_tensors(hidden=1152, layers=1, intermediate=8, image=28, head=False)))
    with pytest.raises(IncompatibleModelError, match="no pooling head"):
        check_encoder(info, headless, "'ip-adapter'", "vision-only")
    sd = detect_adapter({"image_proj.proj.weight": (4 * 768, TINY["projection_dim"]), "image_proj.norm.weight": (768,),
                         **{f"ip_adapter.{2 * n + 1}.to_k_ip.weight": (320, 768) for n in range(16)},
                         **{f"ip_adapter.{2 * n + 1}.to_v_ip.weight": (320, 768) for n in range(16)}}, "sd")  # fmt: skip
    with pytest.raises(IncompatibleModelError, match="it is a SigLIP encoder"):
        check_encoder(sd, siglip, "'sd'", "siglip")


@pytest.mark.skipif(
    SiglipVisionModel is not None, reason="this venv's transformers has SigLIP (the error is for < 4.37)"
)
def test_old_transformers_is_an_error_in_words(tmp_path):
    path = save_siglip(tmp_path / "siglip.safetensors")
    with pytest.raises(EncoderError, match=r"SigLIP encoders need transformers 4\.37 or newer; this WebUI has 4\.30"):
        load_encoder(path)


# -- against transformers (>= 4.37) -----------------------------------------------------------------
def _oracle(tensors: dict[str, torch.Tensor]):
    """transformers' own model, loaded strictly with the file's vision tensors."""
    spec = infer_siglip_spec(_shapes(tensors))
    config = SiglipVisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, image_size=spec.image_size, patch_size=spec.patch_size,
    )  # fmt: skip
    model = SiglipVisionModel(config).eval()
    own = model.state_dict()
    prefix = "vision_model." if next(iter(own)).startswith("vision_model.") else ""
    vision = {prefix + k[len("vision_model.") :]: v for k, v in tensors.items() if k.startswith("vision_model.")}
    missing, unexpected = model.load_state_dict(vision, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return model


@needs_siglip
def test_file_names_are_transformers_names():
    tensors = siglip_tensors()
    model = _oracle(tensors)
    own = {k.removeprefix("vision_model.") for k in model.state_dict() if not k.endswith("position_ids")}
    assert own == {k.removeprefix("vision_model.") for k in tensors if k.startswith("vision_model.")}


@needs_siglip
@pytest.mark.parametrize("layout", ["full file", "vision only, no prefix"])
def test_encoder_equals_siglip_vision_model(tmp_path, layout):
    kw = {} if layout == "full file" else {"prefix": "", "text_tower": False}
    tensors = siglip_tensors(seed=3, **kw)
    path = tmp_path / "siglip.safetensors"
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    enc = load_encoder(path)
    assert isinstance(enc, SiglipVisionEncoder)
    model = _oracle(siglip_tensors(seed=3))
    pixels = torch.randn(2, 3, 56, 56)
    got = enc.encode(pixels)
    with torch.no_grad():
        ref = model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(got.image_embeds, ref.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.last_hidden, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert got.last_hidden.shape == (2, 16, 128)
    # a broken tensor is seen: the oracle is sensitive at this tolerance
    model.head.mlp.fc2.bias.data += 1e-3
    with torch.no_grad(), pytest.raises(AssertionError):
        torch.testing.assert_close(got.image_embeds, model(pixel_values=pixels).pooler_output, rtol=1e-5, atol=1e-5)


@needs_siglip
@pytest.mark.parametrize("size", [(56, 56), (90, 40), (37, 81)])
def test_squash_equals_siglip_image_processor(size):
    processor = SiglipImageProcessor(size={"height": 56, "width": 56})
    image = _image(*size, seed=size[0])
    ref = processor(images=image, return_tensors="pt").pixel_values
    ours = pixel_values([image], 56, "squash", SIGLIP_MEAN, SIGLIP_STD)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if size[0] == size[1]:  # a square reference: centre crop is the same picture
        torch.testing.assert_close(pixel_values([image], 56, "center", SIGLIP_MEAN, SIGLIP_STD), ref, rtol=0, atol=1e-6)


@needs_siglip
def test_references_are_encoded_as_the_processor_and_model_do_and_cached(tmp_path):
    from ipadapter_ext.core.encode.cache import EmbeddingCache

    path = save_siglip(tmp_path / "siglip.safetensors", seed=5)
    enc = load_encoder(path)
    model = _oracle(siglip_tensors(seed=5))
    processor = SiglipImageProcessor(size={"height": 56, "width": 56})
    images = [_image(70, 50, 1), _image(56, 56, 2)]
    cache = EmbeddingCache(8)
    got = encode_references(enc, images, "squash", cache)
    with torch.no_grad():
        ref = model(pixel_values=processor(images=images, return_tensors="pt").pixel_values)
    torch.testing.assert_close(got.image_embeds, ref.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.last_hidden, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    again = encode_references(enc, images, "squash", cache)
    assert cache.misses == 2 and cache.hits == 2 and torch.equal(again.last_hidden, got.last_hidden)


@needs_siglip
def test_black_image_pooled_output(tmp_path):
    enc = load_encoder(save_siglip(tmp_path / "s.safetensors", seed=2))
    model = _oracle(siglip_tensors(seed=2))
    black = Image.new("RGB", (56, 56), (0, 0, 0))
    with torch.no_grad():
        ref = model(
            pixel_values=SiglipImageProcessor(size={"height": 56, "width": 56})(
                images=black, return_tensors="pt"
            ).pixel_values
        )
    torch.testing.assert_close(enc.black_image_embeds(), ref.pooler_output, rtol=1e-5, atol=1e-5)
