"""Attention maps through the real script on both hosts' doubles (tests/doubles): the toggle and
the API switch, one map per image and unit after the generated images, the generated images
unchanged, the final hires pass, and nothing recorded when off."""

from __future__ import annotations

import torch

from tests.a1111_env import PLUS, image, job, run_job, unit_args
from tests.doubles.forge_sampling import run_forge_job
from tests.test_forge import env  # noqa: F401 (env is a fixture)
from tests.test_forge import job as forge_job

LEFT = torch.zeros(16, 16)
LEFT[:, :8] = 1


def with_maps(args: list, on: bool = True) -> list:
    return [*args, on]  # the accordion's "Show where each unit acts", after the units


def is_map(text: str) -> bool:
    return text.startswith("IP-Adapter attention map")


@torch.no_grad()
def test_maps_follow_the_generated_images_and_change_nothing(webui):
    plain = job(webui.model, repeats=(1, 1))
    samples = run_job(webui.script, with_maps(unit_args(PLUS, {**PLUS, "weight": 0.5}), on=False), plain)
    mapped = job(webui.model, repeats=(1, 1))
    again = run_job(webui.script, with_maps(unit_args(PLUS, {**PLUS, "weight": 0.5})), mapped)
    assert torch.equal(samples, again)  # the same computation: recording only reads the term
    assert len(plain.processed.images) == 2 and not any(map(is_map, plain.processed.infotexts))
    texts = mapped.processed.infotexts
    assert texts[:2] == ["generated", "generated"] and len(mapped.processed.images) == 2 + 2 * 2
    assert [t.split(",")[0] for t in texts[2:]] == [
        "IP-Adapter attention map: unit 1",
        "IP-Adapter attention map: unit 2",
    ] * 2
    w, h = mapped.processed.images[0].size  # each map is its image with a legend strip below
    assert all(m.size[0] == w and m.size[1] > h for m in mapped.processed.images[2:])


@torch.no_grad()
def test_an_api_unit_asking_for_maps_maps_every_unit(webui):
    p = job(webui.model)
    units = [
        {"image": image(1), "model": "tiny-plus", "attention_map": True},
        {"image": image(2), "model": "tiny-plus"},
    ]
    run_job(webui.script, units, p)
    assert sum(map(is_map, p.processed.infotexts)) == 2
    without = job(webui.model)
    run_job(webui.script, [{k: v for k, v in u.items() if k != "attention_map"} for u in units], without)
    assert len(without.processed.images) == 1  # a request without the field: exactly today's response


@torch.no_grad()
def test_a_masked_unit_maps_to_its_half(webui):
    p = job(webui.model, latent=(8, 16))
    run_job(webui.script, with_maps(unit_args({**PLUS, "mask": LEFT.numpy()})), p)
    (heat,) = [im for im, t in zip(p.processed.images, p.processed.infotexts, strict=True) if is_map(t)]
    assert heat.size[0] == p.processed.images[0].size[0]


@torch.no_grad()
def test_weight_zero_gives_a_blank_map_not_an_error(webui):
    p = job(webui.model)
    errors: list[str] = []
    run_job(webui.script, with_maps(unit_args({**PLUS, "weight": 0.0})), p, errors)
    assert errors == [] and sum(map(is_map, p.processed.infotexts)) == 1


@torch.no_grad()
def test_hires_shows_the_final_pass(webui):
    p = job(webui.model, enable_hr=True, hr_latent=16)
    run_job(webui.script, with_maps(unit_args(PLUS)), p)
    assert sum(map(is_map, p.processed.infotexts)) == 1


@torch.no_grad()
def test_forge_maps_and_unchanged_images(env):  # noqa: F811
    plain = forge_job(env, batch=2)
    samples = run_forge_job(env.script, with_maps(unit_args(PLUS), on=False), plain)
    mapped = forge_job(env, batch=2)
    again = run_forge_job(env.script, with_maps(unit_args(PLUS)), mapped)
    assert torch.equal(samples, again)
    assert len(plain.processed.images) == 2 and len(mapped.processed.images) == 4
    assert sum(map(is_map, mapped.processed.infotexts)) == 2


def test_rows_are_told_their_image_on_both_hosts():
    from ipadapter_ext.core.job import row_images
    from ipadapter_ext.host.forge.attn2_patch import row_images as forge_row_images

    assert row_images(2, 4) == (0, 1, None, None)  # two images: cond rows, then uncond rows
    assert row_images(3, 5) == (0, 0, 1, None, None)  # image 0 with an AND prompt (two cond rows)
    assert row_images(2, 2) == (0, 1)  # uncond skipped
    assert forge_row_images([1, 0], 4) == (None, None, 0, 1)  # Forge: chunks of the batch
    assert forge_row_images([0, 0], 4) == (0, 1, 0, 1)  # two conds per image (AND) add up
