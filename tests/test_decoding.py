"""Reference images as callers really send them: phone photos with an EXIF orientation, 16-bit
greyscale PNGs, line-wrapped base64, JPEG base64 in the positional ``more_images`` slot, embeds with
NaN, and formats other than PNG/JPEG/WebP.

The UI path is gradio 3.41.2's own ``Image(type="pil")`` preprocessing (what the accordion hands the
script); the API path is the unit schema's base64 decoding. Both must reach the encoder with the
same pixels, so the same tokens.
"""

from __future__ import annotations

import base64
import io
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from ipadapter_ext.core.encode.embeds import pack_embeds, unpack_embeds
from ipadapter_ext.core.engine import Placement
from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111
from ipadapter_ext.schema import IPAdapterUnit, decode_image
from ipadapter_ext.ui.args import parse_script_args
from ipadapter_ext.unit_inputs import decode_mask
from tests.a1111_env import unit_args

CPU = Placement(device=torch.device("cpu"), dtype=torch.float32)


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def portrait_photo() -> tuple[Image.Image, bytes]:
    """A portrait as a phone stores it: the pixels landscape, EXIF Orientation 6 (rotate 90° CW to
    view). Returns the upright picture and the JPEG bytes."""
    rng = np.random.default_rng(3)
    upright = np.zeros((64, 40, 3), dtype=np.uint8)  # tall
    upright[:20] = (220, 40, 40)  # a red top, so the orientation shows in the pixels
    upright[20:] = rng.integers(0, 256, (44, 40, 3), dtype=np.uint8)
    stored = np.rot90(upright, k=1)  # what the sensor wrote: rotated 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return Image.fromarray(upright), encoded(
        Image.fromarray(np.ascontiguousarray(stored)), "JPEG", exif=exif, quality=95
    )


def tokens_of(unit_result) -> tuple[torch.Tensor, torch.Tensor]:
    ((number, unit),) = unit_result
    _, _, cond, uncond = a1111.engine().tokens(unit.to_request(number), CPU)
    return cond, uncond


@torch.no_grad()
def test_an_exif_rotated_portrait_gives_the_same_tokens_through_the_api_and_the_ui(webui):
    import gradio as gr

    upright, jpeg = portrait_photo()
    data_url = "data:image/jpeg;base64," + b64(jpeg)
    ui_image = gr.Image(type="pil", image_mode="RGB").preprocess(data_url)  # what the accordion gets
    assert ui_image.size == upright.size  # gradio applies the orientation
    from_ui = tokens_of(parse_script_args(unit_args({"image": ui_image, "model": "tiny-plus"})))
    api_unit = {"enabled": True, "image": b64(jpeg), "model": "tiny-plus"}
    from_api = tokens_of(parse_script_args([api_unit]))
    assert torch.equal(from_api[0], from_ui[0]) and torch.equal(from_api[1], from_ui[1])
    sideways = Image.open(io.BytesIO(jpeg)).convert("RGB")  # the pixels as stored, before the fix
    assert sideways.size != upright.size
    from_sideways = tokens_of(parse_script_args(unit_args({"image": sideways, "model": "tiny-plus"})))
    assert not torch.allclose(from_sideways[0], from_api[0])


def test_the_api_decodes_an_exif_portrait_upright():
    upright, jpeg = portrait_photo()
    decoded = decode_image(b64(jpeg), "x")
    assert decoded.size == upright.size
    top = np.asarray(decoded)[:16].reshape(-1, 3).mean(0)
    assert top[0] > 180 and top[1] < 90  # the red band is at the top, where the viewer shows it


def test_a_16_bit_greyscale_png_is_its_8_bit_version():
    grey = (np.arange(30 * 40).reshape(30, 40) * 7 % 256).astype(np.uint8)
    eight = encoded(Image.fromarray(grey, "L"), "PNG")
    sixteen = encoded(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")  # 0…255 → 0…65535
    assert Image.open(io.BytesIO(sixteen)).mode in ("I", "I;16")
    assert np.array_equal(np.asarray(decode_image(b64(sixteen), "x")), np.asarray(decode_image(b64(eight), "x")))
    assert torch.equal(decode_mask(b64(sixteen), "mask"), decode_mask(b64(eight), "mask"))
    white = np.asarray(decode_image(b64(sixteen), "x")).mean() / 255
    assert white < 0.6  # not the clipped, nearly all-white picture


@torch.no_grad()
def test_a_16_bit_png_gives_the_tokens_of_its_8_bit_version(webui):
    rgb8 = (np.random.default_rng(5).integers(0, 256, (48, 48))).astype(np.uint8)
    eight, sixteen = (
        encoded(Image.fromarray(rgb8, "L"), "PNG"),
        encoded(Image.fromarray(rgb8.astype(np.uint16) * 257), "PNG"),
    )
    a = tokens_of(parse_script_args([{"enabled": True, "image": b64(eight), "model": "tiny-plus"}]))
    b = tokens_of(parse_script_args([{"enabled": True, "image": b64(sixteen), "model": "tiny-plus"}]))
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("newline", ["\n", "\r\n", " "])
def test_line_wrapped_base64_is_accepted(newline):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    text = b64(encoded(image, "PNG"))
    wrapped = newline.join(textwrap.wrap(text, 76)) + newline  # MIME / `base64` without -w0
    for value in (wrapped, "data:image/png;base64," + wrapped):
        assert np.array_equal(np.asarray(decode_image(value, "x")), np.asarray(image))
    cond = torch.randn(1, 4, 8)
    blob = newline.join(textwrap.wrap(pack_embeds(cond, cond.clone(), "m"), 76))
    assert torch.equal(unpack_embeds(blob)[0], cond)


def test_jpeg_base64_in_the_positional_more_images_slot_is_an_image_not_a_path():
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    jpeg = b64(encoded(image, "JPEG"))
    assert jpeg.startswith("/9j/")  # what made it look like an absolute path
    ((number, unit),) = parse_script_args(unit_args({"image": image, "model": "m", "more": [jpeg]}))
    request = unit.to_request(number)
    assert len(request.images) == 2
    assert np.array_equal(np.asarray(request.images[1]), np.asarray(decode_image(jpeg, "x")))


def test_a_path_outside_the_upload_folders_is_still_refused():
    with pytest.raises(IPAdapterError, match="only files uploaded through the UI"):
        parse_script_args(unit_args({"model": "m", "image": None, "more": ["/etc/hostname.png"]}))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["cond", "uncond"])
def test_embeds_with_nan_or_inf_are_refused(bad, side):
    good = torch.randn(1, 4, 8)
    broken = good.clone()
    broken[0, 1, 2] = bad
    blob = pack_embeds(broken, good, "m") if side == "cond" else pack_embeds(good, broken, "m")
    with pytest.raises(IPAdapterError, match=f"the {side} tokens contain NaN or infinite values"):
        unpack_embeds(blob, "unit 1, embeds")


@pytest.mark.parametrize(
    "fmt,name",
    [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")],
)
def test_only_png_jpeg_and_webp_are_accepted_and_the_message_names_what_came(fmt, name):
    image = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(
        IPAdapterError, match=rf"unit 1, image: the image data is not a PNG, JPEG or WebP image \(it is {name}\)"
    ):
        IPAdapterUnit(image=b64(encoded(image, fmt)), model="m").to_request(1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_three_accepted_formats_decode(fmt):
    image = Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8))
    assert decode_image(b64(encoded(image, fmt)), "x").size == (8, 8)
