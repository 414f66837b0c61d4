"""FaceID Portrait "unnorm" reads ArcFace's raw embedding, as ComfyUI_IPAdapter_plus does
(``ipadapter_execute``: ``face[0].embedding`` when ``is_portrait_unnorm``, else ``normed_embedding``),
through the engine with the tiny face pack of tests/face_onnx.py."""

from __future__ import annotations

import torch

from ipadapter_ext.core.engine import UnitRequest
from ipadapter_ext.core.load.adapter import IPAdapterModel
from ipadapter_ext.core.load.formats import save_adapter_tensors
from ipadapter_ext.host import a1111
from tests.a1111_env import CTX, attn2_widths
from tests.factories import adapter_shapes, adapter_tensors
from tests.test_faceid import FACE, faceid  # noqa: F401 (faceid is a fixture)


@torch.no_grad()
def test_portrait_unnorm_gets_the_raw_face_embedding_and_portrait_the_normalised_one(faceid, tmp_path, monkeypatch):  # noqa: F811
    folder = tmp_path / "models" / "ipadapter"
    shapes = adapter_shapes("resampler", CTX, attn2_widths(faceid.unet), 512, tokens=16, res_dim=48, inner=64)
    save_adapter_tensors(adapter_tensors(shapes, seed=21), folder / "tiny-faceid-portrait_sdxl_unnorm.safetensors")
    engine = a1111.engine()
    engine.registry.refresh()
    seen: list[torch.Tensor] = []
    original = IPAdapterModel.project

    def spy(self, enc, shortcut_scale=1.0):
        if enc.face is not None:
            seen.append(enc.face.clone())
        return original(self, enc, shortcut_scale)

    monkeypatch.setattr(IPAdapterModel, "project", spy)
    place = a1111.placement(faceid.model, faceid.unet)
    (found,) = engine.found_faces(UnitRequest(1, [FACE]), engine._adapter("tiny-portrait"))
    raw, normed = found.embedding(normalised=False), found.embedding(normalised=True)
    assert not torch.allclose(raw.norm(), torch.tensor(1.0))  # the tiny pack's raw embedding is not unit length
    unnorm = engine.unit_tokens(UnitRequest(1, [FACE], "tiny-faceid-portrait_sdxl_unnorm"), place)
    assert engine._adapter("tiny-faceid-portrait_sdxl_unnorm").info.variant == "portrait-unnorm"
    assert torch.equal(seen[0][0], raw)  # cond: the raw embedding
    seen.clear()
    engine.unit_tokens(UnitRequest(1, [FACE], "tiny-portrait"), place)
    assert torch.equal(seen[0][0], normed)  # the other FaceID models: the L2-normalised one
    assert unnorm.references.tokens.cond.shape[1] == 16
