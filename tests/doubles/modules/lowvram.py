"""Double of modules/lowvram.py of AUTOMATIC1111 stable-diffusion-webui 1.10.1 (commit 82a973c,
read in kklouzal/stable-diffusion-webui): the same decisions in the same order, written anew.

``--medvram`` (and ``--medvram-sdxl`` with an SDXL model): everything but the big parts goes to
``devices.device`` at load; the text encoder (``cond_stage_model.transformer`` with its parent,
or SDXL's ``conditioner``), the VAE (``first_stage_model``, through wrapped ``encode``/``decode``
since it is not called through ``forward``) and the UNet wrapper (``sd_model.model``) stay on the
CPU, and a forward pre-hook on each moves it to the device and the previous one back. So between
the text encoder's run and the first UNet call, the UNet's weights are on the CPU.

``--lowvram``: the same, but the UNet is split further: ``time_embed``, each input block, the
middle block and each output block get the pre-hook; the rest of the UNet (``out``) goes to the
device at load.
"""

from __future__ import annotations

from collections import namedtuple

import torch

from modules import devices, shared

module_in_gpu = None
cpu = torch.device("cpu")

ModuleWithParent = namedtuple("ModuleWithParent", ["module", "parent"], defaults=["None"])


def send_everything_to_cpu() -> None:
    global module_in_gpu
    if module_in_gpu is not None:
        module_in_gpu.to(cpu)
    module_in_gpu = None


def is_needed(sd_model) -> bool:
    cmd = shared.cmd_opts
    return bool(cmd.lowvram or cmd.medvram or (cmd.medvram_sdxl and hasattr(sd_model, "conditioner")))


def apply(sd_model) -> None:
    enable = is_needed(sd_model)
    shared.parallel_processing_allowed = not enable
    if enable:
        setup_for_low_vram(sd_model, not shared.cmd_opts.lowvram)
    else:
        sd_model.lowvram = False


def setup_for_low_vram(sd_model, use_medvram: bool) -> None:
    if getattr(sd_model, "lowvram", False):
        return
    sd_model.lowvram = True
    parents: dict = {}

    def send_me_to_gpu(module, _inputs):
        """Move this module (or its registered parent) to the device, the previous one back."""
        global module_in_gpu
        module = parents.get(module, module)
        if module_in_gpu == module:
            return
        if module_in_gpu is not None:
            module_in_gpu.to(cpu)
        module.to(devices.device)
        module_in_gpu = module

    first_stage_model = sd_model.first_stage_model
    first_stage_encode = first_stage_model.encode
    first_stage_decode = first_stage_model.decode

    def encode_wrap(x):
        send_me_to_gpu(first_stage_model, None)
        return first_stage_encode(x)

    def decode_wrap(z):
        send_me_to_gpu(first_stage_model, None)
        return first_stage_decode(z)

    to_remain_in_cpu = [
        (sd_model, "first_stage_model"),
        (sd_model, "depth_model"),
        (sd_model, "embedder"),
        (sd_model, "model"),
    ]
    is_sdxl = hasattr(sd_model, "conditioner")
    is_sd2 = not is_sdxl and hasattr(sd_model.cond_stage_model, "model")
    if is_sdxl:
        to_remain_in_cpu.append((sd_model, "conditioner"))
    elif is_sd2:
        to_remain_in_cpu.append((sd_model.cond_stage_model, "model"))
    else:
        to_remain_in_cpu.append((sd_model.cond_stage_model, "transformer"))

    # the big parts out, everything else to the device, the big parts back (on the CPU)
    stored = []
    for obj, field in to_remain_in_cpu:
        stored.append(getattr(obj, field, None))
        setattr(obj, field, None)
    sd_model.to(devices.device)
    for (obj, field), module in zip(to_remain_in_cpu, stored, strict=True):
        setattr(obj, field, module)

    if is_sdxl:
        sd_model.conditioner.register_forward_pre_hook(send_me_to_gpu)
    elif is_sd2:
        sd_model.cond_stage_model.model.register_forward_pre_hook(send_me_to_gpu)
        parents[sd_model.cond_stage_model.model] = sd_model.cond_stage_model
    else:
        sd_model.cond_stage_model.transformer.register_forward_pre_hook(send_me_to_gpu)
        parents[sd_model.cond_stage_model.transformer] = sd_model.cond_stage_model

    sd_model.first_stage_model.register_forward_pre_hook(send_me_to_gpu)
    sd_model.first_stage_model.encode = encode_wrap
    sd_model.first_stage_model.decode = decode_wrap
    if getattr(sd_model, "depth_model", None) is not None:
        sd_model.depth_model.register_forward_pre_hook(send_me_to_gpu)
    if getattr(sd_model, "embedder", None) is not None:
        sd_model.embedder.register_forward_pre_hook(send_me_to_gpu)

    if use_medvram:
        sd_model.model.register_forward_pre_hook(send_me_to_gpu)
    else:
        unet = sd_model.model.diffusion_model
        # each big part of the UNet on its own: only one of them on the device at a time
        stored = unet.input_blocks, unet.middle_block, unet.output_blocks, unet.time_embed
        unet.input_blocks, unet.middle_block, unet.output_blocks, unet.time_embed = None, None, None, None
        sd_model.model.to(devices.device)
        unet.input_blocks, unet.middle_block, unet.output_blocks, unet.time_embed = stored
        unet.time_embed.register_forward_pre_hook(send_me_to_gpu)
        for block in unet.input_blocks:
            block.register_forward_pre_hook(send_me_to_gpu)
        unet.middle_block.register_forward_pre_hook(send_me_to_gpu)
        for block in unet.output_blocks:
            block.register_forward_pre_hook(send_me_to_gpu)


def is_enabled(sd_model) -> bool:
    return sd_model.lowvram
