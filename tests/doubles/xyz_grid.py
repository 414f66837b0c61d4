"""Double of the X/Y/Z plot script, ``scripts/xyz_grid.py`` of A1111 1.10.1 (commit 82a973c).

What extensions rely on, with the same names and signatures: ``AxisOption(label, type, apply,
format_value=format_value_add_label, confirm=None, cost=0.0, choices=None, prepare=None)``, the
module-level list ``axis_options``, the format helpers, and the ``Script`` class the WebUI finds
in ``modules.scripts.scripts_data``. The WebUI loads the file under the module name
``xyz_grid.py`` (modules/script_loading.py), so tests load this file the same way.

``run_axis`` reduces ``Script.run`` to what an axis sees: the values are converted with the
axis type and passed to ``confirm(p, valslist)`` before anything runs, then each cell is a
shallow ``copy(p)`` on which ``apply(pc, x, xs)`` is called before ``process_images(pc)``.
"""

from copy import copy

from modules import scripts


def _shown(x):
    return round(x, 8) if isinstance(x, float) else x


def format_value_add_label(p, opt, x):
    """Cell label "<axis>: <value>" (floats shown to 8 decimals)."""
    return f"{opt.label}: {_shown(x)}"


def format_value(p, opt, x):
    return _shown(x)


def do_nothing(p, x, xs):
    return None


def format_nothing(p, opt, x):
    return ""


def apply_field(field):
    """An apply() that sets one attribute of the processing object."""
    return lambda p, x, xs: setattr(p, field, x)


class AxisOption:
    """Same constructor signature as the WebUI's; the arguments become attributes."""

    is_img2img = None  # shown on both tabs

    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):  # fmt: skip
        vars(self).update(label=label, type=type, apply=apply, format_value=format_value, confirm=confirm,
                          cost=cost, choices=choices, prepare=prepare)  # fmt: skip


class AxisOptionImg2Img(AxisOption):
    is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
]


def run_axis(p, opt, values, process_images):
    """One axis of ``Script.run``: convert, confirm, then per cell copy ``p``, apply, process."""
    valslist = [opt.type(x) for x in values]
    if opt.confirm:
        opt.confirm(p, valslist)
    results = []
    for x in valslist:
        pc = copy(p)
        opt.apply(pc, x, valslist)
        results.append(process_images(pc))
    return results


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"
