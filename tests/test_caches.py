"""Embedding LRU keyed by content, and K/V computed once per generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.core.attend.kv import UnitKV
from ipadapter_ext.core.encode.cache import EmbeddingCache, image_digest
from ipadapter_ext.core.encode.encoder import ClipVisionEncoder
from ipadapter_ext.core.encode.references import encode_references
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.project.projections import EncodedImages
from tests.factories import SD15_WIDTHS, adapter_shapes, adapter_tensors, tiny_widths
from tests.test_encoder import _save, _tiny_model


def _image(seed, size=(64, 48)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "enc.safetensors"
    _save(_tiny_model(), path)
    return ClipVisionEncoder.from_file(path)


def test_cache_hits_by_content_not_identity(encoder):
    cache = EmbeddingCache(max_items=4)
    a = encode_references(encoder, [_image(1)], "center", cache)
    b = encode_references(encoder, [_image(1).copy()], "center", cache)  # same pixels, new object
    assert (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(a.hidden, b.hidden)  # a cache hit returns what the miss computed
    encode_references(encoder, [_image(1)], "pad", cache)  # crop mode changes the key
    encode_references(encoder, [_image(2)], "center", cache)  # other pixels
    assert (cache.hits, cache.misses) == (1, 3)
    uncached = encode_references(encoder, [_image(1)], "center", None)
    assert torch.equal(uncached.image_embeds, a.image_embeds)  # the same encoder call on the same pixels


def test_cache_is_bounded_lru(encoder):
    cache = EmbeddingCache(max_items=2)
    for seed in (1, 2, 3):
        encode_references(encoder, [_image(seed)], "center", cache)
    assert len(cache) == 2
    encode_references(encoder, [_image(1)], "center", cache)  # evicted: recomputed
    assert cache.misses == 4
    cache.resize(1)
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_multiple_images_concatenate_in_order(encoder):
    both = encode_references(encoder, [_image(1), _image(2)], "center")
    one = encode_references(encoder, [_image(2)], "center")
    assert both.hidden.shape[0] == 2
    # Exact: each image goes through the encoder on its own, so both runs compute the same thing.
    assert torch.equal(both.hidden[1], one.hidden[0])


def test_digest_ignores_alpha_and_sees_pixels():
    img = _image(5)
    assert image_digest(img) == image_digest(img.convert("RGBA"))
    other = img.copy()
    other.putpixel((0, 0), (1, 2, 3))
    assert image_digest(img) != image_digest(other)


def test_kv_computed_once_and_laid_out_per_row(monkeypatch):
    widths = tiny_widths(SD15_WIDTHS)
    model = IPAdapterModel.from_tensors(adapter_tensors(adapter_shapes("base", 32, widths, 40)), "base.bin")
    cond, uncond = model.cond_uncond_tokens(EncodedImages(image_embeds=torch.randn(2, 40)), None)
    assert cond.shape == (1, 8, 32)  # two images × 4 tokens, concatenated
    # Exact: the same projection of the same zero embeds.
    assert torch.equal(uncond, model.project(EncodedImages(image_embeds=torch.zeros(2, 40))).reshape(1, 8, 32))
    kv = UnitKV(model, cond, uncond, "cpu", torch.float32)

    def forbidden(*_):
        raise AssertionError("K/V recomputed during sampling")

    monkeypatch.setattr(model, "layer_kv", forbidden)
    for _step in range(3):
        for layer in range(len(kv)):
            k, v = kv.rows(layer, (True, False, True))
            assert k.shape == (3, 8, widths[layer])
            # K/V were projected for cond and uncond in one batched product, the references row by
            # row: equal to rounding (values of a few units), not bit for bit.
            torch.testing.assert_close(
                k[0], torch.nn.functional.linear(cond[0], model.to_k[layer]), rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                k[1], torch.nn.functional.linear(uncond[0], model.to_k[layer]), rtol=1e-5, atol=1e-5
            )
            assert torch.equal(v[2], v[0])  # two cond rows: the same stored row, copied
    assert kv.rows(0, (True, False, True))[0] is kv.rows(0, (1, 0, 1))[0]  # cached layout


@pytest.mark.parametrize("layout", [(True,), (True, True, True), (False, False), (False,)])
def test_rows_that_all_see_one_stored_row_are_a_view_not_a_copy(layout):
    """Forge calls with one chunk, A1111 with cond and uncond apart: every row sees the same
    stored K/V row, which is expanded (no memory), equal to what index_select would copy."""
    widths = tiny_widths(SD15_WIDTHS)
    model = IPAdapterModel.from_tensors(adapter_tensors(adapter_shapes("base", 32, widths, 40)), "base.bin")
    cond, uncond = model.cond_uncond_tokens(EncodedImages(image_embeds=torch.randn(1, 40)), None)
    kv = UnitKV(model, cond, uncond, "cpu", torch.float32)
    k, v = kv.rows(3, layout)
    stored_k, stored_v = kv.kv[3]
    row = 1 if layout[0] else 0  # rows [0, n) uncond, [n, 2n) cond
    assert k.shape == (len(layout), *stored_k.shape[1:])
    assert k.data_ptr() == stored_k[row].data_ptr() and v.data_ptr() == stored_v[row].data_ptr()  # views
    assert len(layout) == 1 or k.stride(0) == v.stride(0) == 0  # the rows share the stored row's memory
    index = torch.tensor([row] * len(layout))
    assert torch.equal(k, stored_k.index_select(0, index)) and torch.equal(v, stored_v.index_select(0, index))
    mixed, _ = kv.rows(3, (True, False))
    assert mixed.data_ptr() not in (stored_k[0].data_ptr(), stored_k[1].data_ptr())  # two stored rows: gathered


def test_kv_follow_a_device_once(monkeypatch):
    """``to`` moves every layer's K/V and drops the layouts made from the old tensors."""
    widths = tiny_widths(SD15_WIDTHS)
    model = IPAdapterModel.from_tensors(adapter_tensors(adapter_shapes("base", 32, widths, 40)), "base.bin")
    cond, uncond = model.cond_uncond_tokens(EncodedImages(image_embeds=torch.randn(1, 40)), None)
    kv = UnitKV(model, cond, uncond, "cpu", torch.float32)
    before = kv.rows(0, (True, False))[0]
    from tests.doubles.fake_gpu import GPU, fake_gpu

    with fake_gpu():
        kv.to(GPU)
        after = kv.rows(0, (True, False))[0]
        assert kv.device == GPU and after.device == GPU and all(t.device == GPU for pair in kv.kv for t in pair)
        assert torch.equal(after.cpu(), before)
        stored = kv.kv
        kv.to(GPU)  # already there: nothing moves
        assert kv.kv is stored
