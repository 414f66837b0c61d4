"""IP-Adapter axes for the X/Y/Z plot script, against a double of ``scripts/xyz_grid.py``.

The double is loaded the way the WebUI loads the real script (module name ``xyz_grid.py``) and
made discoverable through a ``modules.scripts.scripts_data`` entry, as the real one is.
"""

from __future__ import annotations

import importlib.util
import re
from copy import copy
from pathlib import Path
from types import SimpleNamespace

import modules.scripts
import pytest
import torch
from modules import script_callbacks

from ipadapter_ext.core.errors import IPAdapterError
from ipadapter_ext.host import a1111
from ipadapter_ext.interop import xyz as axes
from ipadapter_ext.schema import WEIGHT_RANGE, IPAdapterUnit
from tests.a1111_env import PLUS, job, run_job, unit_args

XYZ_DOUBLE = Path(__file__).parent / "doubles" / "xyz_grid.py"
LABELS = ["[IP-Adapter] Weight", "[IP-Adapter] Model", "[IP-Adapter] Start", "[IP-Adapter] End",
          "[IP-Adapter] Weight type", "[IP-Adapter] Weight mode", "[IP-Adapter] Composition weight",
          "[IP-Adapter] Noise", "[IP-Adapter] FaceID LoRA strength", "[IP-Adapter] FaceID v2 weight",
          "[IP-Adapter] Redux strength mode", "[IP-Adapter] Redux downsampling", "[IP-Adapter] Style boost",
          "[IP-Adapter] Composition boost", "[IP-Adapter] Crop", "[IP-Adapter] Sharpening",
          "[IP-Adapter] Noise type"]  # fmt: skip


def load_xyz_double():
    spec = importlib.util.spec_from_file_location("xyz_grid.py", XYZ_DOUBLE)  # as modules/script_loading.py
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def plot(monkeypatch):
    """A fresh plot module in ``scripts_data`` (after another script's entry) and ``on_before_ui``."""
    module = load_xyz_double()
    other = SimpleNamespace(script_class=type("Other", (), {}), module=SimpleNamespace(axis_options=[]))
    entries = [other, SimpleNamespace(script_class=module.Script, module=module)]
    monkeypatch.setattr(modules.scripts, "scripts_data", entries, raising=False)

    def on_before_ui(callback, *, name=None):
        script_callbacks.callbacks["before_ui"].append((name, callback))

    monkeypatch.setattr(script_callbacks, "on_before_ui", on_before_ui, raising=False)
    return module


def before_ui():
    for _name, callback in script_callbacks.callbacks["before_ui"]:
        callback()


@pytest.fixture
def grid(plot, webui):
    before_ui()
    return SimpleNamespace(module=plot, webui=webui, axis={o.label: o for o in plot.axis_options})


def ours(module) -> list:
    return [o for o in module.axis_options if o.label.startswith("[IP-Adapter]")]


def test_the_double_is_found_like_the_real_script(plot, monkeypatch):
    assert plot.Script.__module__ == "xyz_grid.py"
    assert axes.find_xyz_module() is plot
    entry = SimpleNamespace(script_class=SimpleNamespace(__module__="xyz_grid.py"), module=plot)
    monkeypatch.setattr(modules.scripts, "scripts_data", [entry], raising=False)
    assert axes.find_xyz_module() is plot
    monkeypatch.setattr(modules.scripts, "scripts_data", [], raising=False)
    assert axes.find_xyz_module() is None
    assert axes.register_xyz_axes(lambda: []) is False
    monkeypatch.delattr(modules.scripts, "scripts_data")
    assert axes.find_xyz_module() is None
    a1111.register_xyz()  # nothing to register into: no error


def test_axes_are_registered_once(plot):
    before = len(plot.axis_options)
    for _ in range(3):
        assert axes.register_xyz_axes(lambda: ["a"]) is True
    assert len(plot.axis_options) == before + len(axes.AXES) == before + len(LABELS)
    assert [o.label for o in ours(plot)] == LABELS
    # a later registration (a reloaded extension) replaces its own entries in place
    assert axes.register_xyz_axes(lambda: ["b"]) is True
    assert len(plot.axis_options) == before + len(axes.AXES) == before + len(LABELS)
    assert {o.label: o for o in plot.axis_options}["[IP-Adapter] Model"].choices() == ["b"]


def test_an_option_with_the_same_label_from_someone_else_is_left_alone(plot):
    foreign = plot.AxisOption("[IP-Adapter] Weight", float, plot.do_nothing)
    plot.axis_options.append(foreign)
    axes.register_xyz_axes(lambda: [])
    assert [o.label for o in ours(plot)] == LABELS
    assert ours(plot)[0] is foreign


def test_labels_types_choices_and_format(plot):
    axes.register_xyz_axes(lambda: ["tiny-base", "tiny-plus"])
    by_label = {o.label: o for o in ours(plot)}
    assert [by_label[label].type for label in LABELS] == [
        float,
        str,
        float,
        float,
        str,
        str,
        float,
        float,
        float,
        float,
        str,
        int,
        float,
        float,
        str,
        float,
        str,
    ]
    assert by_label["[IP-Adapter] Model"].choices() == ["tiny-base", "tiny-plus"]
    assert by_label["[IP-Adapter] Weight type"].choices()[:2] == ["linear", "ease in"]
    assert "style transfer" in by_label["[IP-Adapter] Weight type"].choices()
    assert by_label["[IP-Adapter] Weight mode"].choices() == [
        "V only",
        "K+V",
        "K+V w/ C penalty",
        "K+mean(V) w/ C penalty",
    ]
    assert by_label["[IP-Adapter] Redux strength mode"].choices() == ["scale", "attention bias"]
    with_choices = {
        "[IP-Adapter] Model",
        "[IP-Adapter] Weight type",
        "[IP-Adapter] Weight mode",
        "[IP-Adapter] Redux strength mode",
        "[IP-Adapter] Crop",
        "[IP-Adapter] Noise type",
    }
    assert all(by_label[label].choices is None for label in LABELS if label not in with_choices)
    assert all(isinstance(o, plot.AxisOption) and o.confirm is not None for o in by_label.values())
    weight = by_label["[IP-Adapter] Weight"]
    assert weight.format_value(None, weight, 0.30000000001) == "[IP-Adapter] Weight: 0.3"


def test_model_choices_follow_the_callable(plot):
    names = ["x"]
    axes.register_xyz_axes(lambda: list(names))
    model = {o.label: o for o in ours(plot)}["[IP-Adapter] Model"]
    names.append("y")
    assert model.choices() == ["x", "y"]


def test_apply_writes_overrides_on_the_cell_only(plot):
    axes.register_xyz_axes(lambda: ["tiny-base"])
    by_label = {o.label: o for o in ours(plot)}
    p = SimpleNamespace()
    by_label["[IP-Adapter] Weight"].apply(p, 0.5, [0.5])
    by_label["[IP-Adapter] Start"].apply(p, 0.25, [0.25])
    assert getattr(p, axes.AXIS_OVERRIDE_ATTR) == {"weight": 0.5, "start": 0.25}
    cell = copy(p)  # the plot script's cells are shallow copies
    by_label["[IP-Adapter] Model"].apply(cell, "tiny-base", ["tiny-base"])
    by_label["[IP-Adapter] End"].apply(cell, 0.75, [0.75])
    assert cell.ipadapter_overrides == {"weight": 0.5, "start": 0.25, "model": "tiny-base", "end": 0.75}
    assert p.ipadapter_overrides == {"weight": 0.5, "start": 0.25}


@pytest.mark.parametrize(
    "label,good,bad",
    [
        ("[IP-Adapter] Weight", [WEIGHT_RANGE[0], 0.0, WEIGHT_RANGE[1]], WEIGHT_RANGE[1] + 0.5),
        ("[IP-Adapter] Weight", [1.0], WEIGHT_RANGE[0] - 1.0),
        ("[IP-Adapter] Weight", [1.0], float("nan")),
        ("[IP-Adapter] Start", [0.0, 1.0], -0.1),
        ("[IP-Adapter] End", [0.0, 1.0], 1.5),
        ("[IP-Adapter] Weight type", ["style transfer", "ease in-out"], "stylish"),
        ("[IP-Adapter] Noise", [0.0, 1.0], 1.5),
    ],
)
def test_confirm_rejects_out_of_range_values(plot, label, good, bad):
    axes.register_xyz_axes(lambda: [])
    option = {o.label: o for o in ours(plot)}[label]
    option.confirm(None, good)
    with pytest.raises(RuntimeError, match=re.escape(f'{label} value "{bad}"')) as caught:
        plot.run_axis(SimpleNamespace(), option, [*good, bad], lambda pc: pytest.fail("ran before confirm"))
    assert isinstance(caught.value, axes.AxisValueError)
    field = label.removeprefix("[IP-Adapter] ").lower().replace(" ", "_")
    assert f"{field}: " in str(caught.value)


def test_confirm_rejects_an_unknown_model(plot):
    axes.register_xyz_axes(lambda: ["tiny-base", "tiny-plus"])
    model = {o.label: o for o in ours(plot)}["[IP-Adapter] Model"]
    model.confirm(None, ["tiny-base", "tiny-plus"])
    with pytest.raises(RuntimeError, match='unknown IP-Adapter model "nope"; available: tiny-base, tiny-plus'):
        model.confirm(None, ["tiny-base", "nope"])


def units() -> list[tuple[int, IPAdapterUnit]]:
    return [
        (1, IPAdapterUnit(model="a", weight=1.0, start=0.2, crop="pad")),
        (2, IPAdapterUnit(enabled=False, model="b", weight=0.7)),
        (3, IPAdapterUnit(model="c", weight=0.3, end=0.9)),
    ]


def test_apply_overrides_changes_every_enabled_unit_and_nothing_else():
    given = units()
    p = SimpleNamespace(ipadapter_overrides={"weight": 0.5, "model": "m"})
    result = axes.apply_overrides(p, given)
    assert [n for n, _ in result] == [1, 2, 3]
    (_, u1), (_, u2), (_, u3) = result
    assert (u1.weight, u1.model, u1.start, u1.crop.value) == (0.5, "m", 0.2, "pad")
    assert (u3.weight, u3.model, u3.end) == (0.5, "m", 0.9)
    assert (u2.weight, u2.model) == (0.7, "b")  # disabled: untouched
    assert [u.weight for _, u in given] == [1.0, 0.7, 0.3]  # copies, not mutation
    assert u1 is not given[0][1]


def test_apply_overrides_without_overrides_is_a_no_op():
    given = units()
    assert axes.apply_overrides(SimpleNamespace(), given) is given
    assert axes.apply_overrides(SimpleNamespace(ipadapter_overrides={}), given) is given


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"weight": WEIGHT_RANGE[1] + 1}, "X/Y/Z plot\\): weight: "),
        ({"start": -0.5}, "X/Y/Z plot\\): start: "),
        ({"end": 2}, "X/Y/Z plot\\): end: "),
        ({"crop": "diagonal"}, "X/Y/Z plot\\): crop: "),
        ({"sampler": "Euler"}, "unknown override sampler"),
    ],
)
def test_invalid_overrides_are_errors_naming_the_field(overrides, message):
    with pytest.raises(IPAdapterError, match=message):
        axes.apply_overrides(SimpleNamespace(ipadapter_overrides=overrides), units())


def test_registration_goes_through_on_before_ui(grid):
    assert [o.label for o in ours(grid.module)] == LABELS
    model = grid.axis["[IP-Adapter] Model"]
    assert sorted(model.choices()) == ["tiny-base", "tiny-plus", "tiny-xl"]
    before_ui()
    before_ui()  # the WebUI runs before_ui again on a UI reload
    assert [o.label for o in ours(grid.module)] == LABELS


@torch.no_grad()
def test_weight_axis_zero_is_bit_identical_to_no_extension(grid):
    script, model = grid.webui.script, grid.webui.model
    baseline = run_job(script, unit_args(enabled=False), job(model))
    plain = run_job(script, unit_args(PLUS), job(model))
    p = job(model)
    cells = grid.module.run_axis(
        p, grid.axis["[IP-Adapter] Weight"], ["0", "0.8"], lambda pc: run_job(script, unit_args(PLUS), pc)
    )
    assert torch.equal(cells[0], baseline)
    assert not torch.allclose(plain, baseline)
    assert torch.equal(cells[1], plain)  # PLUS has weight 0.8
    assert not hasattr(p, axes.AXIS_OVERRIDE_ATTR)  # only the cells carried the override


@torch.no_grad()
def test_model_axis_switches_the_model(grid):
    script, model = grid.webui.script, grid.webui.model
    plus = run_job(script, unit_args(PLUS), job(model))
    base = run_job(script, unit_args({**PLUS, "model": "tiny-base"}), job(model))
    infotexts = []

    def process(pc):
        out = run_job(script, unit_args(PLUS), pc)
        infotexts.append(pc.extra_generation_params["IP-Adapter 1"])  # the cells share this dict, as in A1111
        return out

    out = grid.module.run_axis(job(model), grid.axis["[IP-Adapter] Model"], ["tiny-base", "tiny-plus"], process)
    assert not torch.allclose(out[0], plus)
    assert torch.equal(out[0], base) and torch.equal(out[1], plus)
    assert infotexts[0].startswith("model: tiny-base [") and infotexts[1].startswith("model: tiny-plus [")


@torch.no_grad()
def test_weight_type_axis_equals_setting_the_weight_type_in_the_unit(grid):
    script, model = grid.webui.script, grid.webui.model
    kinds = ["linear", "style transfer", "composition"]
    direct = [run_job(script, unit_args({**PLUS, "weight_type": k}), job(model)) for k in kinds]
    infotexts = []

    def process(pc):
        out = run_job(script, unit_args(PLUS), pc)
        infotexts.append(pc.extra_generation_params["IP-Adapter 1"])
        return out

    out = grid.module.run_axis(job(model), grid.axis["[IP-Adapter] Weight type"], kinds, process)
    assert all(torch.equal(a, b) for a, b in zip(out, direct, strict=True))
    assert not torch.allclose(out[1], out[2]) and not torch.allclose(out[0], out[1])
    assert "weight_type" not in infotexts[0] and "weight_type: style transfer" in infotexts[1]


@torch.no_grad()
def test_an_invalid_override_reaches_the_user_as_an_error(grid):
    p = job(grid.webui.model)
    p.ipadapter_overrides = {"weight": 9.0}
    with pytest.raises(IPAdapterError, match="X/Y/Z plot\\): weight: "):
        run_job(grid.webui.script, unit_args(PLUS), p)
