"""Beside a double of sd-webui-controlnet v1.1.455 (tests/doubles/controlnet.py): every hook and
restore order, an exception on either side, both image prompts applying, the control model
seeing only the text context, and ControlNet's folders."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from modules import extensions

from ipadapter_ext.core.attend.attention import ImageKV
from ipadapter_ext.core.attend.hooks import Attn2Hooks
from ipadapter_ext.host import a1111
from ipadapter_ext.interop.controlnet import controlnet_ipadapter_layers, extra_model_dirs
from tests.a1111_env import PLUS, job, no_hooks_left, run_job, unit_args
from tests.doubles.controlnet import ControlNetDouble


def _attn2(webui):
    return a1111.unet_layout(webui.model)[1]


def _cn_kv(modules, seed=3, tokens=5):
    g = torch.Generator().manual_seed(seed)
    k = [torch.randn(1, tokens, m.to_k.out_features, generator=g) for m in modules]
    v = [torch.randn(1, tokens, m.to_k.out_features, generator=g) for m in modules]
    return k, v


def _unhooked_state(module):
    return not module._forward_hooks and not module._forward_pre_hooks and not module.to_q._forward_hooks


@torch.no_grad()
@pytest.mark.parametrize("install", ["ours_first", "controlnet_first"])
@pytest.mark.parametrize("remove", ["ours_first", "controlnet_first"])
def test_every_install_and_restore_order(webui, install, remove):
    module = _attn2(webui)[0]
    cn = ControlNetDouble(webui.unet, 48)
    k, v = _cn_kv([module])
    x, ctx = torch.randn(2, 30, module.to_q.in_features), torch.randn(2, 7, 48)
    stock = module(x, context=ctx)
    ours = torch.randn(1, 4, module.to_k.out_features), torch.randn(1, 4, module.to_k.out_features)
    hooks = Attn2Hooks([module], lambda *_: [ImageKV(*ours, 0.7)])
    steps = [hooks.install, lambda: cn.hack_ipadapter([module], k, v, 0.5)]
    for step in steps if install == "ours_first" else steps[::-1]:
        step()
    both = module(x, context=ctx)
    # the output is to_out(text + our term + ControlNet's term): check it against the parts
    q = module.to_q(x)
    heads = module.heads

    def attend(kk, vv):
        split = lambda t: t.expand(2, -1, -1).reshape(2, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(kk), split(vv)).transpose(1, 2).reshape(2, 30, -1)

    expected = module.to_out(
        attend(module.to_k(ctx), module.to_v(ctx)) + 0.7 * attend(*ours) + 0.5 * attend(k[0], v[0])
    )
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=1e-5)
    removals = [hooks.remove, cn.clear_ipadapter]
    for step in removals if remove == "ours_first" else removals[::-1]:
        step()
    assert _unhooked_state(module) and not module.ipadapter_hacks
    assert torch.equal(module(x, context=ctx), stock)


@torch.no_grad()
def test_both_image_prompts_apply_in_a_generation_and_the_log_says_so(webui, capsys):
    modules = _attn2(webui)
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    ours = run_job(webui.script, unit_args(PLUS), job(webui.model))
    cn = ControlNetDouble(webui.unet, 48)
    cn.hack_ipadapter(modules, *_cn_kv(modules), 0.6)
    cn_only = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    both = run_job(webui.script, unit_args(PLUS), job(webui.model))
    cn.clear_ipadapter()
    assert (
        not torch.allclose(cn_only, baseline) and not torch.allclose(both, cn_only) and not torch.allclose(both, ours)
    )
    assert (
        "ControlNet's own IP-Adapter is also active on 16 cross-attention layers; both apply" in capsys.readouterr().out
    )
    zero = run_job(webui.script, unit_args({**PLUS, "weight": 0}), job(webui.model))
    assert torch.equal(zero, baseline)
    assert all(_unhooked_state(m) for m in modules)


@torch.no_grad()
def test_controlnet_unet_hook_and_control_model_see_only_text(webui):
    cn = ControlNetDouble(webui.unet, 48)
    cn.hook_unet()
    p = job(webui.model)
    with_cn = run_job(webui.script, unit_args(PLUS), p)
    assert cn.control_contexts and all(c.shape[1] == 77 and c.shape[-1] == 48 for c in cn.control_contexts)
    n_cond = sum(p.repeats)
    first = cn.control_contexts[0]
    assert torch.equal(first[:n_cond], p.cond) and torch.equal(first[n_cond:], p.uncond)  # the text, untouched
    assert no_hooks_left(cn.control)
    cn.restore_unet()
    assert not hasattr(webui.unet, "_original_forward")
    without_cn = run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert not torch.allclose(with_cn, without_cn)  # the control residual applied together with our unit


@torch.no_grad()
def test_exception_in_controlnet_mid_sampling(webui):
    modules = _attn2(webui)
    cn = ControlNetDouble(webui.unet, 48)
    cn.hack_ipadapter(modules, *_cn_kv(modules), 0.6)
    cn.fail_at = 20  # a few layers into the second UNet call
    with pytest.raises(RuntimeError, match="ControlNet failed"):
        run_job(webui.script, unit_args(PLUS), job(webui.model))
    assert all(_unhooked_state(m) for m in modules)  # ours are gone; ControlNet's are its own
    assert controlnet_ipadapter_layers(modules) == 16
    cn.clear_ipadapter()
    baseline = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    assert torch.equal(run_job(webui.script, unit_args({**PLUS, "weight": 0}), job(webui.model)), baseline)


@torch.no_grad()
def test_exception_in_ours_leaves_controlnet_working(webui, monkeypatch):
    modules = _attn2(webui)
    cn = ControlNetDouble(webui.unet, 48)
    cn.hack_ipadapter(modules, *_cn_kv(modules), 0.6)
    cn_only = run_job(webui.script, unit_args(enabled=False), job(webui.model))
    from ipadapter_ext.core import job as job_module

    def broken(self, layer, q, ctx):
        raise RuntimeError("IP-Adapter failed")

    monkeypatch.setattr(job_module.Job, "_terms", broken)
    with pytest.raises(RuntimeError, match="IP-Adapter failed"):
        run_job(webui.script, unit_args(PLUS), job(webui.model))
    monkeypatch.undo()
    assert all(_unhooked_state(m) for m in modules) and controlnet_ipadapter_layers(modules) == 16
    assert torch.equal(run_job(webui.script, unit_args(enabled=False), job(webui.model)), cn_only)
    cn.clear_ipadapter()


def test_controlnet_folders_are_shared(tmp_path, monkeypatch):
    root = tmp_path / "extensions" / "sd-webui-controlnet"
    (root / "models").mkdir(parents=True)
    (root / "annotator" / "downloads" / "clip_vision").mkdir(parents=True)
    monkeypatch.setattr(
        extensions,
        "installed",
        [SimpleNamespace(name="sd-webui-controlnet", canonical_name="sd-webui-controlnet", path=str(root))],
    )
    models, encoders = extra_model_dirs()
    assert models == [root / "models"] and encoders == [root / "annotator" / "downloads" / "clip_vision"]
    monkeypatch.setattr(
        extensions, "installed", [SimpleNamespace(name="other", canonical_name="other", path=str(root))]
    )
    assert extra_model_dirs() == ([], [])
