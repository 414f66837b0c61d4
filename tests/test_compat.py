"""Every adapter/encoder/UNet mismatch is reported in words with the fix."""

from __future__ import annotations

import pytest

from ipadapter_ext.core.encode.encoder import infer_clip_spec
from ipadapter_ext.core.errors import IncompatibleModelError
from ipadapter_ext.core.load.compat import UNetSignature, check_encoder, check_unet, compatible_encoders
from ipadapter_ext.core.load.detect import detect_adapter
from tests.factories import SD15_WIDTHS, SDXL_WIDTHS, adapter_shapes
from tests.test_encoder import _vision_shapes

SD15_UNET = UNetSignature(768, SD15_WIDTHS)
SDXL_UNET = UNetSignature(2048, SDXL_WIDTHS)
VIT_H = infer_clip_spec(_vision_shapes(1280, 32, 14, 224, 5120, 1024))
BIG_G = infer_clip_spec(_vision_shapes(1664, 48, 14, 224, 8192, 1280))
VIT_H_NO_PROJ = infer_clip_spec(_vision_shapes(1280, 32, 14, 224, 5120, None))

SD15_BASE = detect_adapter(adapter_shapes("base", 768, SD15_WIDTHS, 1024), "ip-adapter_sd15.bin")
SDXL_BASE = detect_adapter(adapter_shapes("base", 2048, SDXL_WIDTHS, 1280), "ip-adapter_sdxl.bin")
SDXL_PLUS_H = detect_adapter(
    adapter_shapes("resampler", 2048, SDXL_WIDTHS, 1280, tokens=16, res_dim=1280, inner=1280), "plus_sdxl_vit-h.bin"
)
FACEID = detect_adapter(adapter_shapes("faceid", 768, SD15_WIDTHS, 0, lora_rank=8), "faceid.bin")


def test_fitting_pairs_pass():
    check_unet(SD15_BASE, SD15_UNET)
    check_unet(SDXL_PLUS_H, SDXL_UNET)
    check_encoder(SD15_BASE, VIT_H)
    check_encoder(SDXL_BASE, BIG_G)
    check_encoder(SDXL_PLUS_H, VIT_H)
    check_encoder(SDXL_PLUS_H, VIT_H_NO_PROJ)  # hidden states need no projection
    check_encoder(FACEID, BIG_G)  # FaceID needs no CLIP at all


@pytest.mark.parametrize(
    "info,unet,message",
    [
        (
            SDXL_BASE,
            SD15_UNET,
            "is an SDXL IP-Adapter; the loaded checkpoint is SD1.5. Choose an IP-Adapter model made for SD1.5, or load an SDXL checkpoint",
        ),
        (SD15_BASE, SDXL_UNET, "is an SD1.5 IP-Adapter; the loaded checkpoint is SDXL"),
        (SD15_BASE, UNetSignature(1024, SD15_WIDTHS), "the loaded checkpoint is SD2.x"),
        (
            SDXL_BASE,
            UNetSignature(2048, SDXL_WIDTHS[:50], "SSD-1B"),
            "has 70 cross-attention layers; the loaded SSD-1B UNet has 50.*distilled",
        ),
        (SD15_BASE, UNetSignature(768, (320,) * 16), "layer 2 \\(key 5\\) is 640 wide in the adapter but 320 wide"),
    ],
)
def test_unet_mismatch_messages(info, unet, message):
    with pytest.raises(IncompatibleModelError, match=message):
        check_unet(info, unet, "the adapter")


@pytest.mark.parametrize(
    "info,spec,message",
    [
        (
            SDXL_PLUS_H,
            BIG_G,
            "cannot use 'enc': it gives 1664-wide hidden states .*Choose CLIP ViT-H/14 as the encoder, or 'auto'",
        ),
        (SD15_BASE, BIG_G, "gives 1280-wide image embeds .*Choose CLIP ViT-H/14"),
        (SDXL_BASE, VIT_H, "gives 1024-wide image embeds .*Choose CLIP ViT-bigG/14"),
        (SD15_BASE, VIT_H_NO_PROJ, "has no visual_projection weights"),
    ],
)
def test_encoder_mismatch_messages(info, spec, message):
    with pytest.raises(IncompatibleModelError, match=message):
        check_encoder(info, spec, "the adapter", "enc")


def test_compatible_encoders_for_auto():
    specs = [("clip_h", VIT_H), ("clip_g", BIG_G), ("clip_h_bare", VIT_H_NO_PROJ)]
    assert compatible_encoders(SDXL_PLUS_H, specs) == ["clip_h", "clip_h_bare"]
    assert compatible_encoders(SDXL_BASE, specs) == ["clip_g"]
    assert compatible_encoders(SD15_BASE, specs) == ["clip_h"]
