"""What a person does in the real page, in headless Chromium (opt-in like the rest of tests/e2e).

A new user's first Generate on a fresh ui-config (the suite starts the WebUI with its own empty
``--ui-config-file``), in txt2img and img2img; the ↙ paste of the result's infotext; the 🔄
button; the info line; the hover hints and unit tab marks of ``javascript/ipadapter.js``; and a
screenshot of the open accordion, saved under ``WEBUI_E2E_ARTIFACTS`` (default: the run's temp
folder; the path is printed).

Needs selenium in the test venv and Debian's ``chromium`` + ``chromium-driver``; without them
these tests are skipped with what to install. Each test opens a fresh page.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .browser_steps import (
    click_tab,
    infotext_settings,
    open_unit_tab,
    set_up_unit_1,
    small_job,
)
from .http_client import png_b64


def test_first_generate_with_only_unit_1_set_up_txt2img(page, model, reference, artifacts):
    assert page.checked(page.uid("txt2img", 1, "enabled"))
    assert not page.checked(page.uid("txt2img", 2, "enabled")) and not page.checked(page.uid("txt2img", 3, "enabled"))
    small_job(page, "txt2img")
    set_up_unit_1(page, "txt2img", model, reference)
    info = page.generate("txt2img")
    assert 'IP-Adapter 1: "model: ' + model in info.replace("\n", " ")
    assert "IP-Adapter 2" not in info
    shot = page.screenshot(artifacts / "ipadapter-accordion-txt2img.png", "#script_txt2img_ipadapter_enabled")
    print(f"\nscreenshot of the open accordion: {shot}")
    assert shot.stat().st_size > 5000


def test_first_generate_with_only_unit_1_set_up_img2img(page, model, reference):
    page.switch_tab("img2img")
    page.upload("#img2img_image", reference)
    page.wait(lambda: page.find_all("#img2img_image img"), "the img2img input to show")
    small_job(page, "img2img")
    set_up_unit_1(page, "img2img", model, reference)
    info = page.generate("img2img")
    assert 'IP-Adapter 1: "model: ' + model in info.replace("\n", " ")


def test_paste_restores_unit_1(page, model, reference):
    small_job(page, "txt2img")
    set_up_unit_1(page, "txt2img", model, reference, weight=0.65)
    page.choose(page.uid("txt2img", 1, "weight_type"), "style transfer")
    info = page.generate("txt2img")
    page.open()  # a new page: every control back at its default
    page.open_accordion("txt2img", tick=False)
    assert page.number(page.uid("txt2img", 1, "weight")) == 1.0
    page.set_text("#txt2img_prompt", info)
    page.find("#paste").click()
    page.wait(lambda: page.number(page.uid("txt2img", 1, "weight")) == 0.65, "the pasted weight")
    assert page.dropdown_value(page.uid("txt2img", 1, "model")) == model
    assert page.dropdown_value(page.uid("txt2img", 1, "weight_type")) == "style transfer"
    assert page.checked(page.uid("txt2img", 1, "enabled"))


def test_the_info_line_describes_the_chosen_model(page, model):
    page.open_accordion("txt2img", tick=False)
    page.choose(page.uid("txt2img", 1, "model"), model)
    # gradio 4 shows a progress timer ("0.1s") in the block while the description is computed
    text = page.wait(
        lambda: (t := page.find(page.uid("txt2img", 1, "info")).text) and "IP-Adapter" in t and t, "the info line"
    )
    assert "tokens" in text and "needs" in text, text


def test_refresh_lists_a_model_added_while_the_server_runs(page, webui, model):
    if webui.root is None or not webui.adapter_file:
        pytest.skip("needs WEBUI_ROOT: the test adds a model file to the install's models/ipadapter")
    folder = webui.root / "models" / "ipadapter"
    added = folder / "e2e-added-while-running.safetensors"
    shutil.copyfile(folder / webui.adapter_file, added)
    try:
        page.open_accordion("txt2img", tick=False)
        css = page.uid("txt2img", 1, "model")
        assert "e2e-added-while-running" not in page.dropdown_options(css)
        page.find(page.uid("txt2img", 1, "refresh")).click()
        page.wait(lambda: "e2e-added-while-running" in page.dropdown_options(css), "the new model in the list")
    finally:
        added.unlink(missing_ok=True)
        webui.client.get("/ipadapter/v1/models?refresh=true")


def test_hover_hints_on_unit_controls(page):
    page.open_accordion("txt2img", tick=False)

    def title_of(text: str) -> str:
        return page.js(
            "for (const el of document.querySelectorAll('#script_txt2img_ipadapter_enabled span')) {"
            "  if (el.textContent.trim() === arguments[0] && el.title) return el.title; }"
            "return '';",
            text,
        )

    page.wait(lambda: title_of("Unit 1 weight"), "the hint on 'Unit 1 weight'")
    assert "strongly" in title_of("Unit 1 weight")
    assert "skipped" in page.wait(lambda: title_of("Enable unit 1"), "the hint on 'Enable unit 1'")
    image_block = page.find(page.uid("txt2img", 1, "image"))
    assert "image prompt" in (image_block.get_attribute("title") or "")


def test_unit_tabs_show_which_units_apply(page, model, reference):
    def mark(unit: int) -> str:
        return page.js(
            "const b = [...document.querySelectorAll('#script_txt2img_ipadapter_units .tab-nav button')]"
            ".find(b => b.textContent.trim().startsWith('Unit ' + arguments[0]));"
            "return b ? (b.dataset.ipadapterState || '') + '|' + b.textContent.replace(/\\s+/g, ' ').trim() : 'missing';",
            unit,
        )

    page.open_accordion("txt2img", tick=False)
    page.wait(lambda: mark(1) == "|Unit 1", "unit 1 unmarked (enabled but untouched: skipped)")
    set_up_unit_1(page, "txt2img", model, reference)
    page.wait(lambda: mark(1) == "ready|Unit 1 ✓", "unit 1 marked ready")
    # Unit 2: enabled with a model but no image → warned before Generate
    open_unit_tab(page, "txt2img", 2)
    page.find(page.uid("txt2img", 2, "enabled") + " input[type=checkbox]").click()
    page.choose(page.uid("txt2img", 2, "model"), model)
    page.wait(lambda: mark(2) == "incomplete|Unit 2 ⚠", "unit 2 marked incomplete")


def test_dropping_an_image_ticks_the_unit_and_the_accordion(page, reference):
    page.open_accordion("txt2img", tick=False)
    open_unit_tab(page, "txt2img", 2)
    assert not page.checked(page.uid("txt2img", 2, "enabled"))
    page.upload(page.uid("txt2img", 2, "image"), reference)
    page.wait(lambda: page.checked(page.uid("txt2img", 2, "enabled")), "unit 2 to be ticked")
    page.wait(
        lambda: page.js(
            "const b = document.querySelector('#script_txt2img_ipadapter_enabled input[type=checkbox]');"
            "return b && b.checked;"
        ),
        "the accordion to be ticked",
    )


def test_the_map_toggle_shows_a_map_in_the_gallery(page, model, reference):
    def distinct_images() -> int:
        return page.js("return new Set([...document.querySelectorAll('#txt2img_gallery img')].map(i => i.src)).size;")

    small_job(page, "txt2img")
    set_up_unit_1(page, "txt2img", model, reference)
    page.find("#script_txt2img_ipadapter_attention_map input[type=checkbox]").click()
    page.generate("txt2img")
    page.wait(lambda: distinct_images() >= 2, "the generated image and its map in the gallery")


def test_batch_folder_with_the_img2img_input_as_the_reference(page, webui, model, tmp_path_factory, repeatable_img2img):
    """The Batch tab over a folder of 3 images with "Use the img2img input as the reference":
    every output's infotext says so, and each equals an API img2img of its own input with that
    input as the reference (the same seed and settings, read back from the file's infotext).

    img2img's latent is a sample of the VAE's posterior drawn from torch's global generator as
    the previous generation left it, so the API requests are sent in the batch's order and the
    first file, whose predecessor was another test's generation, is checked by its infotext only."""
    import base64

    folder = tmp_path_factory.mktemp("batch")
    inputs, outputs = folder / "in", folder / "out"
    inputs.mkdir()
    sources = {f"input{i}": png_b64(64, seed=20 + i) for i in range(3)}
    for name, data in sources.items():
        (inputs / f"{name}.png").write_bytes(base64.b64decode(data))
    # Forge names batch outputs after their input only with this option (A1111 always does)
    options = webui.client.get("/sdapi/v1/options").json()
    if "img2img_batch_use_original_name" in options:
        answer = webui.client.post("/sdapi/v1/options", {"img2img_batch_use_original_name": True})
        assert answer.status == 200, answer.text
    try:
        check_batch(page, webui, model, sources, inputs, outputs)
    finally:
        if "img2img_batch_use_original_name" in options:
            original = {"img2img_batch_use_original_name": options["img2img_batch_use_original_name"]}
            webui.client.post("/sdapi/v1/options", original)


def check_batch(page, webui, model: str, sources: dict, inputs: Path, outputs: Path) -> None:
    import base64

    from .http_client import pixels
    from .test_webui_http import generate, same_pixels, with_units

    page.switch_tab("img2img")
    click_tab(page, "#mode_img2img", "Batch")
    if page.js("return !!document.querySelector('#img2img_batch_source');"):  # reForge, Classic: a folder only
        click_tab(page, "#img2img_batch_source", "From directory")
    page.set_text("#img2img_batch_input_dir", str(inputs))
    page.set_text("#img2img_batch_output_dir", str(outputs))
    small_job(page, "img2img")
    page.open_accordion("img2img")
    page.find(f"{page.uid('img2img', 1, 'image_from_init')} input[type=checkbox]").click()
    page.choose(page.uid("img2img", 1, "model"), model)
    page.generate("img2img")
    page.wait(lambda: len(list(outputs.glob("*.png"))) == 3, "three images in the output folder")

    def source_name(path: Path) -> str:  # "00001-input1.png" (A1111), "input1.png" (Forge)
        return next(name for name in sources if name in path.stem)

    # the WebUI walks the input folder in name order: the outputs in the batch's order
    for index, path in enumerate(sorted(outputs.glob("*.png"), key=source_name)):
        from PIL import Image

        with Image.open(path) as im:
            info = im.info.get("parameters", "")
        assert 'IP-Adapter 1: "model: ' + model in info and "images: init" in info, info
        source = sources[source_name(path)]
        settings = infotext_settings(info)
        payload = {"prompt": "", "negative_prompt": "", "init_images": [source], "width": 64, "height": 64,
                   "batch_size": 1, "n_iter": 1, **settings}  # fmt: skip
        unit = {"image": None, "image_from_init": True, "model": model, "weight": 1.0}
        api = generate(webui.client, with_units(payload, unit), "img2img")[0]
        saved = base64.b64encode(path.read_bytes()).decode()
        assert pixels(saved).shape == (64, 64, 3)
        if index:
            assert same_pixels(api, saved), f"{path.name} differs from img2img of its input with it as the reference"
