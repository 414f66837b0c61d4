"""Unit defaults and argument parsing shared by the UI and the script."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.schema import DEFAULTS, IPAdapterUnit, decode_image
from ipadapter_ext.ui.args import parse_script_args
from ipadapter_ext.ui.layout import UNIT_FIELDS

from .ui_values import UI_VALUES


def _b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _image(seed=0, size=(20, 12)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_defaults():
    assert (DEFAULTS.enabled, DEFAULTS.encoder, DEFAULTS.weight, DEFAULTS.start, DEFAULTS.end) == (
        True,
        "auto",
        1.0,
        0.0,
        1.0,
    )
    assert DEFAULTS.crop.value == "center"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_base64_images_decode_with_or_without_data_prefix(fmt):
    image = _image()
    for text in (_b64(image, fmt), f"data:image/{fmt.lower()};base64," + _b64(image, fmt)):
        decoded = decode_image(text, "x")
        assert decoded.size == image.size and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decode_image(_b64(image), "x")), np.asarray(image))  # PNG is lossless


@pytest.mark.parametrize(
    "text,message",
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"hello world").decode(), "not a PNG, JPEG or WebP"),
        (_b64(_image())[:40], "not valid base64|not a PNG|could not be decoded"),
    ],
)
def test_bad_images_name_the_problem(text, message):
    with pytest.raises(IPAdapterError, match=f"unit 2, image: .*({message})"):
        IPAdapterUnit(image=text, model="m").to_request(2)


def test_huge_image_is_refused_before_decoding(monkeypatch):
    import ipadapter_ext.unit_inputs as unit_inputs

    monkeypatch.setattr(unit_inputs, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(IPAdapterError, match="is 12×20; at most .*Downscale"):
        decode_image(_b64(_image()), "unit 1")


def _ui_args(*units):
    args = [True]
    for u in units:
        row = {**UI_VALUES, "enabled": True, **u}
        args += [row[f] for f in UNIT_FIELDS]
    return args


def test_parse_ui_args(tmp_path):
    extra = tmp_path / "more.png"
    _image(3).save(extra)

    class Upload:  # gradio 3 hands uploads over as temp-file objects
        name = str(extra)

    units = parse_script_args(
        _ui_args(
            {"image": _image(1), "more_images": [Upload()], "model": "a", "weight": 0.5},
            {"enabled": False},
            {"image": _b64(_image(2)), "model": "b", "crop": "pad"},
        )
    )
    assert [n for n, _ in units] == [1, 3]
    first, third = units[0][1].to_request(1), units[1][1].to_request(3)
    assert len(first.images) == 2 and first.weight == 0.5 and first.model == "a"
    assert np.array_equal(np.asarray(first.images[1]), np.asarray(_image(3)))
    assert third.crop == "pad" and third.images[0].size == (12, 20)
    assert parse_script_args(_ui_args({"image": _image(1), "enabled": False})) == []  # a unit switched off
    assert parse_script_args([False, *_ui_args({"image": _image(1)})[1:]]) == []


@pytest.mark.parametrize(
    "change,message",
    [
        ({"weight": 7.0}, "weight"),
        ({"start": -0.1}, "start"),
        ({"crop": "diagonal"}, "crop"),
        ({"model": None}, "model"),
    ],
)
def test_out_of_range_values_name_the_field(change, message):
    with pytest.raises(IPAdapterError, match=f"IP-Adapter unit 1: .*{message}"):
        parse_script_args(_ui_args({"image": _image(1), "model": "a", **change}))


def test_model_none_means_no_model():
    ((_, unit),) = parse_script_args(_ui_args({"image": _image(1)}))
    assert unit.model == ""


def test_api_objects_in_args_positions_or_a_list_in_the_first():
    from ipadapter_ext.api.payload import api_units

    one, two = {"image": _b64(_image(1)), "model": "a"}, {"model": "b", "image": _b64(_image(2)), "weight": 0.3}
    ui_defaults_after = [False, None, None, "None", "auto", 1.0, 0.0, 1.0, "center"]
    for args in ([one, two, *ui_defaults_after], [[one, two]], [one]):
        units = api_units(args)
        assert [n for n, _ in units] == [1, 2][: len(units)]
        assert units[0][1].model == "a" and units[0][1].weight == 1.0 and units[0][1].encoder == "auto"
    assert api_units([True, True, None, None, "a", "auto", 1.0, 0.0, 1.0, "center"]) is None  # UI layout
    assert [n for n, _ in api_units([{"enabled": False, "model": "a"}, two])] == [2]


@pytest.mark.parametrize(
    "unit,message",
    [
        ({"model": "a", "colour": "red"}, "colour: extra fields not permitted|colour: Extra inputs are not permitted"),
        (
            {"model": "a", "weight": "heavy"},
            "weight: value is not a valid float|weight: Input should be a valid number",
        ),
        (
            {"model": "a", "weight": 9},
            "weight: ensure this value is less than or equal to 3.0|weight: Input should be less than or equal to 3",
        ),
        ({"model": "a", "end": 1.5}, "end: "),
        ({"model": "a", "crop": "middle"}, "crop: "),
        ({"model": "a", "enabled": "perhaps"}, "enabled: "),
        ({"model": ["a"]}, "model: "),
        ({"model": "a", "image": "%%%"}, "image: the image is not valid base64"),
        ({"model": "a", "image": ["", 3]}, "image"),
        ({"model": "a", "image": 5}, "image: expected a base64-encoded image, got int"),
        ({"model": "a", "image": {"x": 1}}, "image: expected a base64-encoded image, got dict"),
        ({"model": "a", "image": "data:image/png;base64,%%"}, "image: the image is not valid base64"),
        (
            {"model": "a", "image": _b64(_image())[: len(_b64(_image())) // 2 // 4 * 4]},
            "image: (the image could not be decoded|the image data is not)",
        ),
        (
            {"model": "a", "image": base64.b64encode(b"GIF89a" + bytes(20)).decode()},
            "image: the image data is not a PNG",
        ),
        ({"model": "a", "start": "soon"}, "start: "),
        ({"model": "a", "start": 2}, "start: "),
        ({"model": "a", "end": -1}, "end: "),
        ({"model": "a", "weight": -5}, "weight: "),
        ({"model": "a", "weight": None}, "weight: "),
        ({"model": "a", "weight": [1]}, "weight: "),
        ({"model": "a", "crop": 3}, "crop: "),
        ({"model": "a", "enabled": "yes please"}, "enabled: "),
        ({"model": "a", "start": 0.9, "end": 0.1}, "start \\(0.9\\) is after end \\(0.1\\)"),
        ({"model": "a", "unknown": 1, "another": 2}, "(unknown|another): .*(unknown|another): "),
        ({"model": "a", "embeds": "%%"}, "embeds: not valid base64"),
        ({"model": "a", "embeds": _b64(_image())}, "embeds: not a safetensors blob"),
    ],
)
def test_malformed_api_units_name_the_field(unit, message):
    from ipadapter_ext.api.payload import api_units

    with pytest.raises(IPAdapterError, match=f"IP-Adapter unit 1(: |, )({message})"):
        [u.to_request(n) for n, u in api_units([unit])]


def test_a_unit_that_is_not_an_object():
    from ipadapter_ext.api.payload import validate_unit

    with pytest.raises(IPAdapterError, match="unit 3: expected a JSON object, got list"):
        validate_unit([1, 2], 3)


@pytest.mark.parametrize("model", ["plain", "with, comma: and colon", "odd [brackets]"])
def test_infotext_value_round_trip(model):
    from ipadapter_ext.ui.infotext import parse_unit_infotext, unit_infotext

    unit = IPAdapterUnit(model=model, encoder="clip_h", weight=-0.35, start=0.25, end=0.75, crop="left")
    fields = parse_unit_infotext(unit_infotext(unit, "0123abcdef", 3))
    assert fields == {"model": model, "model_hash": "0123abcdef", "encoder": "clip_h", "weight": -0.35,
                      "start": 0.25, "end": 0.75, "crop": "left", "images": 3}  # fmt: skip
    assert parse_unit_infotext(unit_infotext(unit, None, 1))["model"] == model
    assert parse_unit_infotext("weight: 0.5, future: 1, crop: top") == {"weight": 0.5, "crop": "top"}


def test_new_fields_parse_from_lists_text_and_base64():
    from ipadapter_ext.api.payload import validate_unit

    mask = Image.fromarray(np.tile(np.array([0, 255], np.uint8).repeat(4), (6, 1)))  # left black, right white
    unit = validate_unit(
        {"image": [_b64(_image(1)), _b64(_image(2))], "model": "m", "weight_type": "composition",
         "weight_mode": "K+mean(V) w/ C penalty", "layer_weights": "1, -0.5 0", "combine": "subtract",
         "image_weights": [1, 0.25], "negative_image": _b64(_image(3)), "noise": 0.5, "mask": _b64(mask)}, 4
    )  # fmt: skip
    req = unit.to_request(4)
    assert req.weight_type.value == "composition" and req.mode.value == "K+mean(V) w/ C penalty"
    assert (
        req.layer_weights == (1.0, -0.5, 0.0) and req.image_weights == (1.0, 0.25) and req.combine.value == "subtract"
    )
    assert len(req.negative_images) == 1 and np.array_equal(np.asarray(req.negative_images[0]), np.asarray(_image(3)))
    assert req.noise == 0.5 and req.mask.shape == (6, 8) and req.mask[:, :4].max() == 0 and req.mask[:, 4:].min() == 1
    assert DEFAULTS.weight_type.value == "linear" and DEFAULTS.weight_mode.value == "V only"
    assert (DEFAULTS.combine.value, DEFAULTS.noise, DEFAULTS.mask, DEFAULTS.layer_weights) == (
        "concat",
        0.0,
        None,
        None,
    )


@pytest.mark.parametrize(
    "change,message",
    [
        ({"layer_weights": [1, 9]}, "layer_weights: .*9 is outside \\[-1, 3\\]"),
        ({"layer_weights": "1, heavy"}, "layer_weights: .*'heavy' is not a number"),
        ({"image_weights": {"a": 1}}, "image_weights: .*expected a list of numbers"),
        ({"weight_type": "stylish"}, "weight_type: "),
        ({"weight_mode": "Q only"}, "weight_mode: "),
        ({"noise": -0.5}, "noise: "),
        ({"composition_weight": 4}, "composition_weight: "),
        ({"image_weights": [1, 1]}, "image_weights has 2 numbers for 1 reference image"),
        ({"mask": "%%%"}, ", mask: the image is not valid base64"),
        ({"negative_image": 7}, ", negative_image: expected a base64-encoded image"),
    ],
)
def test_bad_new_fields_name_the_unit_and_the_field(change, message):
    from ipadapter_ext.api.payload import validate_unit

    with pytest.raises(IPAdapterError, match=f"IP-Adapter unit 2.*{message}"):
        validate_unit({"image": _b64(_image()), "model": "m", **change}, 2).to_request(2)


def test_ui_uploads_open_only_inside_gradios_upload_folders(tmp_path, monkeypatch):
    inside = tmp_path / "upload.png"
    _image(5).save(inside)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "elsewhere"))
    ((_, unit),) = parse_script_args(_ui_args({"image": _image(1), "more_images": [str(inside)], "model": "a"}))
    assert np.array_equal(np.asarray(unit.images()[1]), np.asarray(_image(5)))  # gradio 4: a path string
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    for outside in (str(inside), {"name": str(inside)}):
        with pytest.raises(IPAdapterError, match="only files uploaded through the UI can be read"):
            parse_script_args(_ui_args({"image": _image(1), "more_images": [outside], "model": "a"}))
