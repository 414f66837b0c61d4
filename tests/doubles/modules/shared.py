"""Double of modules/shared.py (+ modules/options.py): ``opts``, ``cmd_opts``, ``sd_model``,
``OptionInfo``. Options default to the WebUI's defaults for the CFG-denoiser settings."""

from types import SimpleNamespace


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kw):
        self.default, self.label, self.component, self.component_args, self.section = (
            default, label, component, component_args, section,
        )  # fmt: skip
        self.onchange = onchange


class Options(SimpleNamespace):
    def add_option(self, key, info):
        self.data_labels[key] = info
        if not hasattr(self, key):
            setattr(self, key, info.default)


def reset():
    global opts, cmd_opts, sd_model
    opts = Options(
        data_labels={},
        batch_cond_uncond=True,
        pad_cond_uncond=False,
        pad_cond_uncond_v0=False,
        skip_early_cond=0.0,
        s_min_uncond_all=False,
        upcast_attn=False,
        hires_fix_refiner_pass="second pass",
    )
    cmd_opts = SimpleNamespace(medvram=False, lowvram=False, medvram_sdxl=False)
    sd_model = None


opts = cmd_opts = sd_model = None
reset()
