"""Double of ``apply_refiner`` in modules/sd_samplers_common.py of AUTOMATIC1111 1.10.1 (commit
82a973c, read in kklouzal/stable-diffusion-webui), written anew. The CFG denoiser calls it first
thing in every ``forward``, before ``on_cfg_denoiser``: once the switch point is passed it records
the refiner in the infotext, loads it with ``sd_models.reload_model_weights`` (which fires
``model_loaded_callback``), recomputes the conds with the refiner (``p.setup_conds``) and hands
them to the denoiser (``update_inner_model``). Only the switch by sampling steps is mirrored (the
real one may use the sigma instead; that changes *when*, not *what*).
"""

from __future__ import annotations

from modules import devices, sd_models, shared


def apply_refiner(cfg_denoiser, sigma=None) -> bool:
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    p = cfg_denoiser.p
    if p.refiner_switch_at is not None and completed_ratio < p.refiner_switch_at:
        return False
    info = p.refiner_checkpoint_info
    if info is None or shared.sd_model.sd_checkpoint_info == info:
        return False
    if getattr(p, "enable_hr", False):
        second = p.is_hr_pass
        if shared.opts.hires_fix_refiner_pass == "first pass" and second:
            return False
        if shared.opts.hires_fix_refiner_pass == "second pass" and not second:
            return False
    p.extra_generation_params["Refiner"] = info.short_title
    p.extra_generation_params["Refiner switch at"] = p.refiner_switch_at
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=info)
    devices.torch_gc()
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True
