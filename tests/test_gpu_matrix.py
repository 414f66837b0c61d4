"""The GPU matrix script (tests/e2e/gpu_matrix.py) without a GPU or a WebUI: its plan, its dry run,
how it reads JUnit reports into the table, and its exit status."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tests.e2e import gpu_matrix

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
<testcase classname="tests.e2e.test_webui_http" name="test_a" time="1.0"/>
<testcase classname="tests.e2e.test_webui_http" name="test_b" time="1.0"><failure message="boom">x</failure></testcase>
<testcase classname="tests.e2e.test_webui_refiner" name="test_c" time="1.0"><skipped message="no sdxl"/></testcase>
<testcase classname="tests.e2e.test_webui_refiner" name="test_d" time="1.0"/>
<testcase classname="tests.e2e.test_webui_memory" name="test_e" time="1.0"><error message="fixture"/></testcase>
</testsuite></testsuites>
"""


@pytest.fixture
def a1111_root(tmp_path):
    root = tmp_path / "webui"
    root.mkdir()
    (root / "launch.py").write_text("")
    return root


def test_dry_run_plans_one_suite_run_per_flag_and_runs_nothing(a1111_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = gpu_matrix.main(["--root", str(a1111_root), "--base-args=--xformers", "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    for flag in ("--medvram-sdxl", "--lowvram", "--medvram"):
        assert f"WEBUI_ARGS='--xformers {flag}'" in printed
    assert "[plain] WEBUI_ROOT=" in printed and "WEBUI_ARGS=--xformers " in printed
    assert "tests/e2e" in printed and "--junitxml=" in printed
    assert "GPU: " in printed and "(cells: passed/failed/skipped)" in printed


def test_flag_values_that_start_with_a_dash_need_no_equals_sign(a1111_root, capsys):
    argv = ["--root", str(a1111_root), "--flags", "--lowvram,plain", "--base-args", "--use-cpu all", "--dry-run"]
    assert gpu_matrix.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[--lowvram] " in printed and "WEBUI_ARGS='--use-cpu all --lowvram'" in printed
    assert "[plain] " in printed and "[--medvram]" not in printed


def test_forge_gets_its_own_flags(a1111_root, capsys):
    (a1111_root / "modules_forge").mkdir()
    assert gpu_matrix.main(["--root", str(a1111_root), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "--always-low-vram" in printed and "--always-offload-from-vram" in printed and "--lowvram" not in printed


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "give --root"),
        (["--root", "/nonexistent-webui"], "no launch.py"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("WEBUI_ROOT", raising=False)
    assert gpu_matrix.main([*argv, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_a_flag_that_is_not_a_flag_is_refused(a1111_root, capsys):
    assert gpu_matrix.main(["--root", str(a1111_root), "--flags", "plain,medvram", "--dry-run"]) == 2


def test_junit_reports_become_the_table(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(JUNIT)
    results = gpu_matrix.read_junit(report)
    assert {k: v.cell() for k, v in results.items()} == {
        "tests/e2e/test_webui_http.py": "1/1/0",
        "tests/e2e/test_webui_refiner.py": "1/0/1",
        "tests/e2e/test_webui_memory.py": "0/1/0",
    }
    runs = gpu_matrix.plan(tmp_path, ["plain", "--lowvram"], "", tmp_path, [])
    runs[0].files, runs[0].returncode = results, 1
    (tmp_path / "plain.json").write_text('{"probe": {"lowvram": false, "device": "cuda"}, "vram": {"grown": 1048576}}')
    text = gpu_matrix.table(runs)
    assert "tests/e2e/test_webui_refiner.py" in text and "1/0/1" in text
    assert "total" in text and "2/2/1" in text and "not run" in text
    assert "lowvram=off, device=cuda, VRAM +1.0 MiB after a unit" in text
    assert runs[0].failed and not runs[1].failed


def test_a_run_reads_its_report_and_a_run_without_one_is_a_failure(tmp_path):
    (run,) = gpu_matrix.plan(tmp_path, ["plain"], "", tmp_path, [])
    writer = textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(run.junit)!r}).write_text({JUNIT!r})
        raise SystemExit(1)
    """)
    run.command = [sys.executable, "-c", writer]
    gpu_matrix.run(run, timeout=60)
    assert run.returncode == 1 and run.files["tests/e2e/test_webui_http.py"].failed == 1 and run.failed
    (broken,) = gpu_matrix.plan(tmp_path / "b", ["plain"], "", tmp_path, [])
    broken.junit = tmp_path / "missing.xml"
    broken.command = [sys.executable, "-c", "raise SystemExit(4)"]
    gpu_matrix.run(broken, timeout=60)
    assert broken.failed and "no JUnit report" in broken.note


def test_a_run_out_of_time_is_interrupted_so_it_can_clean_up(tmp_path):
    """pytest stops on Ctrl+C through its fixtures' teardown (the WebUI stopped, the install
    cleaned); a kill would leave the WebUI, which runs in its own process group, behind."""
    (run,) = gpu_matrix.plan(tmp_path, ["plain"], "", tmp_path, [])
    cleaned = tmp_path / "cleaned"
    sleeper = textwrap.dedent(f"""
        import pathlib, time
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            pathlib.Path({str(cleaned)!r}).write_text("yes")
            raise SystemExit(2)
    """)
    run.command = [sys.executable, "-c", sleeper]
    gpu_matrix.run(run, timeout=8)  # time for the child to reach its try
    assert cleaned.read_text() == "yes"
    assert run.returncode == 124 and "timed out" in run.note and run.failed


def test_named_test_files_replace_the_whole_suite(a1111_root, tmp_path):
    from tests.e2e.gpu_matrix import plan

    files = plan(a1111_root, ["plain"], "", tmp_path, ["tests/e2e/test_webui_refiner.py"])[0].command
    whole = plan(a1111_root, ["plain"], "", tmp_path, ["-k", "refiner"])[0].command
    assert "tests/e2e" not in files and "tests/e2e/test_webui_refiner.py" in files
    assert "tests/e2e" in whole
