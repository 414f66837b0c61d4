"""javascript/ipadapter.js against the UI it decorates: a hint for every unit control, keyed on
the same labels the UI builds, and element ids that exist. The browser tests (tests/e2e) check
that the page shows them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import gradio as gr
import pytest
from modules import shared

from ipadapter_ext.ui.accordion import unit_label

SCRIPT = Path(__file__).resolve().parents[1] / "javascript" / "ipadapter.js"


def js_object(name: str) -> dict:
    """A ``var NAME = {...};`` literal of string keys and values, read as JSON."""
    body = re.search(rf"var {name} = (\{{.*?\n    \}});", SCRIPT.read_text(), re.S).group(1)
    body = re.sub(r"^\s*(\w+):", r'"\1":', body, flags=re.M)  # bare keys
    return json.loads(re.sub(r",\s*\}$", "}", body))


def unit_controls(webui) -> dict[str, object]:
    """Unit 1's labelled controls by label."""
    shared.opts.ipadapter_units = 2
    with gr.Blocks() as tab:
        webui.script.ui(False)
    found = {}

    def walk(block):
        for child in getattr(block, "children", []):
            walk(child)
        label, elem_id = getattr(block, "label", None), getattr(block, "elem_id", None) or ""
        if label and "_unit_1_" in elem_id and not isinstance(block, gr.Accordion):
            found[label] = block

    walk(tab)
    return found


def test_every_unit_control_has_a_hint_under_its_label(webui):
    hints = js_object("HINTS")
    labels = unit_controls(webui)
    assert labels, "no unit controls found"
    assert sorted(labels) == sorted(unit_label(1, text) for text in hints)  # no control without, no stale hint
    assert all(len(h) > 20 for h in hints.values())


def test_hints_by_element_id_name_real_controls(webui):
    by_id = js_object("BY_ID")
    hints = js_object("HINTS")
    ids = {c.elem_id for c in unit_controls(webui).values()}
    for suffix, text in by_id.items():
        assert f"script_txt2img_ipadapter_unit_1_{suffix}" in ids
        assert text in hints


def test_the_unit_label_rule_is_the_same_in_python_and_javascript():
    source = SCRIPT.read_text()
    assert unit_label(3, "Enable") == "Enable unit 3" and '"Enable unit " + n' in source
    assert unit_label(3, "Weight type") == "Unit 3 weight type" and '"Unit " + n + " "' in source


def test_the_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the syntax check needs it (the browser tests run the script for real)")
    result = subprocess.run([node, "--check", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_unit_label_rule_gives_the_same_labels_in_node():
    """Run the script's ``unitLabel`` in node on every hinted text (names such as "FaceID" keep
    their capital in both languages)."""
    import json
    import re

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: this check runs the script's unitLabel in node")
    source = SCRIPT.read_text()
    function = re.search(r"    function unitLabel\(n, text\) \{.*?\n    \}", source, re.S)
    assert function, "unitLabel not found in the script"
    texts = ["Enable", *js_object("HINTS")]
    program = function.group(0) + f"\nconsole.log(JSON.stringify({json.dumps(texts)}.map(t => unitLabel(2, t))));"
    result = subprocess.run([node, "-e", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [unit_label(2, t) for t in texts]
    assert unit_label(2, "FaceID LoRA strength") == "Unit 2 FaceID LoRA strength"


@pytest.mark.parametrize("host_titles", [True, False], ids=["hints.js-titles", "no-titles-ersatzForge"])
def test_labels_get_their_hints_with_or_without_the_hosts_titles_table(host_titles):
    """A1111's and Forge's hints.js show hints from a global ``titles`` table, which the script fills;
    ersatzForge cut hints.js down and has none, so the script puts each hint on its label itself
    (and leaves labels alone where hints.js will). Runs the whole script in node on a stub page."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: this check runs the script in node")
    texts = ["Unit 1 weight", "Enable unit 2", "IP-Adapter", "Unit 3 FaceID LoRA strength", "Unrelated"]
    program = (
        f"const labels = {json.dumps(texts)}.map(t => ({{textContent: ' ' + t + ' ', title: ''}}));\n"
        "const root = {querySelectorAll: () => labels};\n"
        "let loaded = null;\n"
        "global.document = {querySelector: s => s === '#script_txt2img_ipadapter_enabled' ? root : null,"
        " addEventListener() {}};\n"
        "global.onUiLoaded = f => { loaded = f; };\n"
        "global.onUiUpdate = () => {};\n"
        + ("global.titles = {};\n" if host_titles else "")
        + SCRIPT.read_text()
        + "\nloaded();\n"
        "console.log(JSON.stringify({labels: labels.map(l => l.title),"
        " table: typeof titles === 'undefined' ? null : titles['Unit 1 weight']}));\n"
    )
    result = subprocess.run([node, "-e", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    hints = js_object("HINTS")
    if host_titles:
        assert out["table"] == hints["Weight"] and out["labels"] == [""] * len(texts)
    else:
        assert out["table"] is None
        weight, enable, accordion, lora, unrelated = out["labels"]
        assert (weight, enable, lora) == (hints["Weight"], hints["Enable"], hints["FaceID LoRA strength"])
        assert accordion.startswith("Image prompts") and unrelated == ""
