"""Driving the real WebUI page in headless Chromium (selenium), for the browser tests.

Only element ids the WebUI and this extension set are used (``txt2img_generate``,
``script_txt2img_ipadapter_unit_1_model`` …), plus the few gradio structures every version has (a
file ``input`` inside an image block, a dropdown's ``input`` and its option list). Everything
waits for the page instead of sleeping a fixed time: gradio renders and updates asynchronously.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
and ``pip install selenium``; :func:`missing` says what is absent.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("WEBUI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WEBUI_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = float(os.environ.get("WEBUI_BROWSER_TIMEOUT", "120"))


def missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed in the test venv (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} not found (apt-get install {package}, or set WEBUI_CHROMIUM / WEBUI_CHROMEDRIVER)"
    return None


def start_driver(width: int = 1400, height: int = 2400) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",  # this machine's network is closed: no background calls
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.page_load_strategy = "eager"  # gradio keeps connections open; its own readiness is waited for
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SLOW_FRAMES})
    return driver


#: Animation frames at most 5 a second per loop. Gradio 4's ImageEditor (the mask boxes on Forge)
#: runs a PixiJS WebGL render loop per editor, hidden or not, at 60 fps: with 12 on the page, the
#: software GL of a GPU-less Chromium took both cores and native clicks waited minutes for a frame.
#: Cancelling still works (ids are the wrapper's own).
SLOW_FRAMES = """(() => {
  const raf = window.requestAnimationFrame.bind(window), caf = window.cancelAnimationFrame.bind(window);
  const live = new Map(); let next = 1;
  window.requestAnimationFrame = (cb) => {
    const id = next++;
    live.set(id, {timer: setTimeout(() => {
      const entry = live.get(id);
      if (entry) entry.frame = raf((t) => { live.delete(id); cb(t); });
    }, 200)});
    return id;
  };
  window.cancelAnimationFrame = (id) => {
    const entry = live.get(id);
    if (!entry) return;
    live.delete(id);
    clearTimeout(entry.timer);
    if (entry.frame !== undefined) caf(entry.frame);
  };
})();"""


class Page:
    """The WebUI page in one browser tab; ``tab`` is ``txt2img`` or ``img2img``."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        self.url = url

    # ------------------------------------------------------------------------------- waiting

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # stale or not yet rendered elements
                last = exc
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}" + (f" (last error: {last})" if last else ""))

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.wait(lambda: self.driver.find_element(By.CSS_SELECTOR, css), css)

    def find_all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    # ----------------------------------------------------------------------------- the page

    def open(self) -> None:
        if self.driver.current_url.startswith("http"):  # leaving a page gradio still talks to
            self.js("window.onbeforeunload = null;")
            self.driver.get("about:blank")
        self.driver.get(self.url)
        self.wait(lambda: self.js("return !!document.querySelector('gradio-app') && "
                                  "!!(document.querySelector('gradio-app').shadowRoot || document)"
                                  ".querySelector('#txt2img_generate')"), "the WebUI page")  # fmt: skip
        # the WebUI runs its onUiLoaded callbacks once the page is built; give them a moment
        self.wait(lambda: self.js("return document.readyState === 'complete'"), "the page to finish loading")

    def switch_tab(self, tab: str) -> None:
        button = self.wait(
            lambda: next(b for b in self.find_all("#tabs > .tab-nav > button, #tabs .tab-nav button")
                         if b.text.strip().lower() == tab), f"the {tab} tab button")  # fmt: skip
        button.click()
        self.wait(lambda: self.find(f"#{tab}_generate").is_displayed(), f"the {tab} tab")

    def uid(self, tab: str, unit: int, name: str) -> str:
        return f"#script_{tab}_ipadapter_unit_{unit}_{name}"

    def open_accordion(self, tab: str, tick: bool = True) -> None:
        """Open the IP-Adapter accordion and (``tick``) tick its checkbox, as a user does."""
        root = f"#script_{tab}_ipadapter_enabled"
        self.find(root).location_once_scrolled_into_view  # noqa: B018 (scrolls)
        if not self.find(f"{root} .label-wrap, {root} > .label-wrap").get_attribute("class").count("open"):
            self.find(f"{root} .label-wrap").click()
        if tick:
            box = self.find(f"{root} .input-accordion-checkbox, {root}-visible-checkbox")
            if not box.is_selected():
                box.click()
        self.wait(lambda: self.find(self.uid(tab, 1, "model")).is_displayed(), "the unit controls")

    def upload(self, css: str, path: Path) -> None:
        """Put a file into the gradio upload inside ``css`` (the same as dropping it there)."""
        field = self.find(f"{css} input[type=file]")
        field.send_keys(str(path))

    def choose(self, css: str, value: str) -> None:
        """Pick ``value`` in the gradio dropdown inside ``css``."""
        box = self.find(f"{css} input")
        box.click()
        option = self.wait(
            lambda: next(o for o in self.find_all(f"{css} ul.options li, {css} li.item")
                         if (o.get_attribute("data-value") or o.text.strip()) == value),
            f"option {value!r} in {css}")  # fmt: skip
        option.click()
        self.wait(lambda: self.dropdown_value(css) == value, f"{css} to show {value!r}")

    def dropdown_value(self, css: str) -> str:
        return self.find(f"{css} input").get_attribute("value")

    def dropdown_options(self, css: str) -> list[str]:
        """The choices a user sees on opening the dropdown; the list is closed again by moving
        the focus away (gradio 4 ignores Escape there), so callers may retry."""
        options = f"{css} ul.options li, {css} li.item"
        if not self.find_all(options):
            self.find(f"{css} input").click()
        items = self.wait(lambda: self.find_all(options), f"the options of {css}", timeout=15)
        values = [o.get_attribute("data-value") or o.text.strip() for o in items]
        self.js("if (document.activeElement) document.activeElement.blur();")
        self.wait(lambda: not self.find_all(options), f"the options of {css} to close", timeout=15)
        return values

    def set_number(self, css: str, value: float) -> None:
        """A slider's number box (``css`` is the slider's block)."""
        box = self.find(f"{css} input[type=number]")
        self.js("arguments[0].value = arguments[1];"
                "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));"
                "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", box, str(value))  # fmt: skip

    def number(self, css: str) -> float:
        return float(self.find(f"{css} input[type=number]").get_attribute("value"))

    def checked(self, css: str) -> bool:
        return self.find(f"{css} input[type=checkbox]").is_selected()

    def set_text(self, css: str, text: str) -> None:
        area = self.find(f"{css} textarea")
        self.js("arguments[0].value = arguments[1];"
                "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", area, text)  # fmt: skip

    def generate(self, tab: str) -> str:
        """Press Generate and wait for the result; returns the infotext shown under the gallery."""
        before = self.js(f"return (document.querySelector('#html_info_{tab}') || {{}}).innerText || ''")
        self.find(f"#{tab}_generate").click()

        def done() -> str | None:
            log = self.js(f"return (document.querySelector('#html_log_{tab}') || {{}}).innerText || ''")
            if "Error" in log or "error" in log.lower().split("time taken")[0]:
                raise AssertionError(f"the WebUI reported an error: {log}")
            info = self.js(f"return (document.querySelector('#html_info_{tab}') || {{}}).innerText || ''")
            images = self.find_all(f"#{tab}_gallery img")
            return info if info and info != before and images else None

        return self.wait(done, f"the {tab} result")

    def screenshot(self, path: Path, css: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if css is None:
            self.driver.save_screenshot(str(path))
        else:
            self.find(css).screenshot(str(path))
        return path
