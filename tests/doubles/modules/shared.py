"""Double of modules/shared.py (+ modules/options.py, modules/shared_state.py): ``opts``,
``cmd_opts``, ``sd_model``, ``OptionInfo``, ``state``. Options default to the WebUI's defaults for
the CFG-denoiser settings."""

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


class State:
    """modules/shared_state.py ``State`` (A1111 1.10.1): what a job, the progress route and the
    interrupt route share. ``begin`` clears an interrupt left from before the job, as there."""

    def __init__(self):
        self.interrupted = self.skipped = False
        self.job, self.job_count, self.job_no = "", 0, 0
        self.sampling_step = self.sampling_steps = 0

    def begin(self, job="(unknown)"):
        self.interrupted = self.skipped = False
        self.job, self.job_count, self.job_no = job, -1, 0
        self.sampling_step = self.sampling_steps = 0

    def end(self):
        self.job, self.job_count = "", 0

    def interrupt(self):
        self.interrupted = True

    def dict(self):
        return {
            "skipped": self.skipped,
            "interrupted": self.interrupted,
            "job": self.job,
            "job_count": self.job_count,
            "job_no": self.job_no,
            "sampling_step": self.sampling_step,
            "sampling_steps": self.sampling_steps,
        }


def reset():
    global opts, cmd_opts, sd_model, state
    state = State()
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


opts = cmd_opts = sd_model = state = None
reset()
