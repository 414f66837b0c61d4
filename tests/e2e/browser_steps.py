"""What the browser tests do again and again in the page (a small job, unit 1 set up, a unit
tab opened, a tab clicked) and the infotext read back; their fixtures (``driver``, ``page``,
``reference``, ``artifacts``) are in this folder's ``conftest.py``."""

from __future__ import annotations

from pathlib import Path

from . import browser

PLAIN = {"steps": 2, "width": 64, "height": 64}


def small_job(page: browser.Page, tab: str) -> None:
    """2 steps at 64×64, so a CPU generates in seconds."""
    page.set_number(f"#{tab}_steps", PLAIN["steps"])
    page.set_number(f"#{tab}_width", PLAIN["width"])
    page.set_number(f"#{tab}_height", PLAIN["height"])


def set_up_unit_1(page: browser.Page, tab: str, model: str, reference: Path, weight: float | None = None) -> None:
    page.open_accordion(tab)
    page.upload(page.uid(tab, 1, "image"), reference)
    page.wait(lambda: page.find_all(f"{page.uid(tab, 1, 'image')} img"), "the reference image to show")
    page.choose(page.uid(tab, 1, "model"), model)
    if weight is not None:
        page.set_number(page.uid(tab, 1, "weight"), weight)


def open_unit_tab(page: browser.Page, tab: str, unit: int) -> None:
    page.js(
        f"[...document.querySelectorAll('#script_{tab}_ipadapter_units .tab-nav button')]"
        ".find(b => b.textContent.trim().startsWith('Unit ' + arguments[0])).click();",
        unit,
    )
    page.wait(lambda: page.find(page.uid(tab, unit, "model")).is_displayed(), f"unit {unit}'s tab")


def click_tab(page: browser.Page, tabs: str, text: str) -> None:
    page.js(
        "[...document.querySelectorAll(arguments[0] + ' > .tab-nav button, ' + arguments[0] + ' .tab-nav button')]"
        ".find(b => b.textContent.trim() === arguments[1]).click();",
        tabs,
        text,
    )


def infotext_settings(info: str) -> dict:
    """The sampling settings of an infotext, as API fields."""
    import re

    last = info.strip().split("\n")[-1]  # ersatzForge ends the infotext with a newline
    fields = dict(re.findall(r"(?:^|, )([A-Za-z][A-Za-z ]*?): ([^,\n]+)", last))
    out = {
        "steps": int(fields["Steps"]),
        "sampler_name": fields["Sampler"],
        "cfg_scale": float(fields["CFG scale"]),
        "seed": int(fields["Seed"]),
        "denoising_strength": float(fields["Denoising strength"]),
    }
    if "Schedule type" in fields:
        out["scheduler"] = fields["Schedule type"]
    return out
