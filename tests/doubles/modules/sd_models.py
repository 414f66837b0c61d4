"""Double of the model switching in modules/sd_models.py of AUTOMATIC1111 1.10.1 (commit 82a973c,
read in kklouzal/stable-diffusion-webui), written anew, for what the refiner does mid-sampling:

``reload_model_weights(info=…)`` with another checkpoint (``sd_checkpoints_limit`` 1, the default):
the loaded model goes to the CPU (``send_model_to_cpu``: lowvram's ``send_everything_to_cpu`` for a
lowvram model); then

* the same model config: the new weights are loaded **into the same model object** (same UNet
  module), it goes back to the device unless lowvram, and ``model_loaded_callback`` fires;
* another config (SDXL base → SDXL refiner, SD1.5 → SDXL): the old model is sent to the trash
  (``to("meta")`` there: its weights are gone; here they become NaN, as unusable), a new model is
  built, ``send_model_to_device`` (``lowvram.apply``, or ``to(device)``) places it,
  ``model_data.set_sd_model`` makes it ``shared.sd_model``, and ``model_loaded_callback`` fires.
"""

from __future__ import annotations

import torch

from modules import devices, lowvram, script_callbacks, shared


class _ModelData:
    def __init__(self) -> None:
        self.sd_model = None

    def set_sd_model(self, model) -> None:
        self.sd_model = model
        shared.sd_model = model  # A1111: shared.sd_model reads model_data.sd_model


model_data = _ModelData()


class SkipWritingToConfig:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def send_model_to_cpu(m) -> None:
    if m is not None:
        if m.lowvram:
            lowvram.send_everything_to_cpu()
        else:
            m.to(devices.cpu)
    devices.torch_gc()


def model_target_device(m):
    return devices.cpu if lowvram.is_needed(m) else devices.device


def send_model_to_device(m) -> None:
    lowvram.apply(m)
    if not m.lowvram:
        m.to(devices.device)


def send_model_to_trash(m) -> None:
    with torch.no_grad():
        m.to(devices.cpu)
        for t in (*m.parameters(), *m.buffers()):
            if t.is_floating_point():
                t.fill_(float("nan"))
    devices.torch_gc()


def load_model(checkpoint_info):
    from tests.doubles.sd_model import SDModel

    if model_data.sd_model is not None:
        send_model_to_trash(model_data.sd_model)
        model_data.sd_model = None
    sd_model = SDModel(checkpoint_info.build_unet(), sdxl=checkpoint_info.sdxl, info=checkpoint_info)
    send_model_to_device(sd_model)
    model_data.set_sd_model(sd_model)
    script_callbacks.model_loaded_callback(sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    sd_model = sd_model or model_data.sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == info.filename and not forced_reload:
        return sd_model
    if sd_model is not None:
        send_model_to_cpu(sd_model)
    if sd_model is None or info.config != sd_model.used_config:
        if sd_model is not None:
            send_model_to_trash(sd_model)
        model_data.sd_model = sd_model
        return load_model(info)
    # same config: the new checkpoint's weights go into the loaded model
    with torch.no_grad():
        state = info.build_unet().state_dict()
        unet = sd_model.model.diffusion_model
        for name, tensor in unet.state_dict().items():
            tensor.copy_(state[name])
    sd_model.sd_checkpoint_info = info
    sd_model.sd_model_checkpoint = info.filename
    if not sd_model.lowvram:
        sd_model.to(devices.device)
    script_callbacks.model_loaded_callback(sd_model)
    model_data.set_sd_model(sd_model)
    return sd_model


def checkpoint(title: str, config: str, build_unet, sdxl: bool = False):
    """A checkpoint the doubles can switch to (``CheckpointInfo``)."""
    from tests.doubles.sd_model import CheckpointInfo

    return CheckpointInfo(title, config, build_unet, sdxl)
