"""Unit controls in the real page (opt-in like the rest of tests/e2e; needs what
``test_browser.py`` needs): the img2img-only and FaceID controls, the Redux controls of a Flux
Redux model, and a tiled unit with a reference mask set through the page."""

from __future__ import annotations

import pytest

from .browser_steps import (
    set_up_unit_1,
    small_job,
)


def test_img2img_only_controls_and_the_faceid_controls(page):
    """The img2img sources exist in both tabs (one argument layout) but show in img2img only; the
    FaceID sliders and the detected-faces toggle are there with their hints."""

    def visible(tab: str, name: str) -> bool:
        return bool(page.js("const el = document.querySelector(arguments[0]);"
                            "return !!el && el.offsetParent !== null && getComputedStyle(el).display !== 'none';",
                            page.uid(tab, 1, name)))  # fmt: skip

    page.open_accordion("txt2img", tick=False)
    page.js("document.querySelector(arguments[0] + ' .label-wrap').click();", page.uid("txt2img", 1, "advanced"))
    page.wait(lambda: visible("txt2img", "mask_invert"), "the Advanced controls of unit 1")
    assert not visible("txt2img", "image_from_init") and not visible("txt2img", "mask_from_inpaint")
    assert visible("txt2img", "lora_strength") and visible("txt2img", "faceid_v2_weight")
    assert page.number(page.uid("txt2img", 1, "lora_strength")) == 0.6
    assert page.find("#script_txt2img_ipadapter_show_faces").is_displayed()
    page.switch_tab("img2img")
    page.open_accordion("img2img", tick=False)
    page.wait(lambda: visible("img2img", "image_from_init"), "the img2img input checkbox")
    page.js("document.querySelector(arguments[0] + ' .label-wrap').click();", page.uid("img2img", 1, "advanced"))
    page.wait(lambda: visible("img2img", "mask_from_inpaint"), "the inpaint-mask checkbox")

    def title_of(text: str) -> str:
        return page.js(
            "for (const el of document.querySelectorAll('#script_img2img_ipadapter_enabled span')) {"
            "  if (el.textContent.trim() === arguments[0] && el.title) return el.title; }"
            "return '';",
            text,
        )

    assert "reference" in page.wait(lambda: title_of("Unit 1 use the img2img input as the reference"), "a hint")
    assert "LoRA" in page.wait(lambda: title_of("Unit 1 FaceID LoRA strength"), "the LoRA strength hint")


def test_a_redux_model_shows_its_controls(page, webui, artifacts):
    """Choosing a Flux Redux model shows the unit's Redux controls with the schema's defaults;
    choosing no model hides them again (any checkpoint: the controls do not depend on it)."""
    if webui.root is None:
        pytest.skip("needs WEBUI_ROOT: the test adds a Redux file to the install's models/ipadapter")
    from safetensors.torch import save_file

    from tests.flux_env import redux_tensors

    added = webui.root / "models" / "ipadapter" / "e2e-browser-redux.safetensors"
    save_file({k: v.contiguous() for k, v in redux_tensors(embed=128, txt=64).items()}, str(added))
    try:
        page.open_accordion("txt2img", tick=False)
        css = page.uid("txt2img", 1, "model")
        page.find(page.uid("txt2img", 1, "refresh")).click()
        page.wait(lambda: "e2e-browser-redux" in page.dropdown_options(css), "the Redux model in the list")

        def shown() -> bool:
            return bool(page.js("const el = document.querySelector(arguments[0]);"
                                "return !!el && el.offsetParent !== null;", page.uid("txt2img", 1, "redux")))  # fmt: skip

        assert not shown(), "the Redux controls show before a Redux model is chosen"
        page.choose(css, "e2e-browser-redux")
        page.wait(shown, "the Redux controls")
        assert page.dropdown_value(page.uid("txt2img", 1, "redux_strength_mode")) == "scale"
        assert page.number(page.uid("txt2img", 1, "redux_downsample")) == 1
        assert page.dropdown_value(page.uid("txt2img", 1, "redux_downsample_mode")) == "area"
        assert "attention bias" in page.dropdown_options(page.uid("txt2img", 1, "redux_strength_mode"))
        info = page.wait(
            lambda: (t := page.find(page.uid("txt2img", 1, "info")).text) and "Redux" in t and t, "the info"
        )
        assert "Flux Redux" in info and "strength" in info, info
        print(f"\nscreenshot: {page.screenshot(artifacts / 'redux-unit.png', '#script_txt2img_ipadapter_enabled')}")
        page.choose(css, "None")
        page.wait(lambda: not shown(), "the Redux controls to hide")
    finally:
        added.unlink(missing_ok=True)
        webui.client.get("/ipadapter/v1/models?refresh=true")


def test_a_tiled_unit_with_a_reference_mask_through_the_page(page, model, tmp_path_factory):
    """Crop "tiles" and a reference mask set in the page reach the generation (its infotext)."""
    import base64

    from .test_webui_craft import grey_mask, wide_reference

    folder = tmp_path_factory.mktemp("craft")
    wide, keep = folder / "wide.png", folder / "keep.png"
    wide.write_bytes(base64.b64decode(wide_reference()))
    keep.write_bytes(base64.b64decode(grey_mask((210, 90), 0.6)))
    small_job(page, "txt2img")
    set_up_unit_1(page, "txt2img", model, wide)
    page.choose(page.uid("txt2img", 1, "crop"), "tiles")
    box = page.uid("txt2img", 1, "reference_mask")
    page.upload(box, keep)
    page.wait(lambda: page.find_all(f"{box} img, {box} canvas"), "the reference mask to show")
    info = page.generate("txt2img").replace("\n", " ")
    assert "crop: tiles" in info and "tiles: 3 across" in info, info
    assert "reference_mask: yes" in info, info
