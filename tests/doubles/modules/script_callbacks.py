"""Double of modules/script_callbacks.py: the callbacks the extension registers and the
``CFGDenoiserParams`` container with the WebUI's constructor signature."""

from collections import defaultdict

callbacks = defaultdict(list)


class CFGDenoiserParams:
    def __init__(
        self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None
    ):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


def _add(kind, callback, name):
    callbacks[kind].append((name, callback))


def on_cfg_denoiser(callback, *, name=None):
    _add("cfg_denoiser", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback, name)


def on_app_started(callback, *, name=None):
    _add("app_started", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback, name)


def on_before_ui(callback, *, name=None):
    _add("before_ui", callback, name)


def cfg_denoiser_callback(params):
    for _name, callback in callbacks["cfg_denoiser"]:
        callback(params)


def model_loaded_callback(sd_model):
    for _name, callback in callbacks["model_loaded"]:
        callback(sd_model)


def script_unloaded_callback():
    for _name, callback in callbacks["script_unloaded"]:
        callback()


def before_ui_callback():
    """webui.py calls it after every script is loaded (at start and after each UI reload), in the
    UI and the API-only server alike."""
    for _name, callback in callbacks["before_ui"]:
        callback()


def app_started_callback(demo, app):
    for _name, callback in callbacks["app_started"]:
        callback(demo, app)
