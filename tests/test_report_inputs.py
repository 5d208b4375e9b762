"""`kdkit report` and `kdkit compare` validate everything they read: a bad run folder or result file is
left out with one line naming it and why, the rest of the report is written; nothing hangs on an alias
bomb or a huge metrics file; names from files are escaped for mathtext, HTML/Markdown and the terminal;
``--out`` errors are one line."""

import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import HANG_S

from kdkit.cli import main as cli

CONFIG = {"model": {"name": "cnn_tiny"}, "method": [{"name": "vanilla"}], "train": {"epochs": 2, "seed": 0}}


def make_run(folder, config=CONFIG, rows=None):
    """A finished two-epoch run as kdkit writes it (config.yaml and metrics.jsonl)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = rows if rows is not None else [
        {"epoch": 1, "stage": "main", "lr": 0.05, "train/loss": 1.5, "train/ce": 1.5, "val/top1": 70.0},
        {"epoch": 2, "stage": "main", "lr": 0.0, "train/loss": 0.9, "train/ce": 0.9, "val/top1": 80.0},
        {"final": True, "epoch": 2, "test/top1": 78.5, "deployed": "student"}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def laughs(levels=12):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BAD_RUNS = {  # folder contents -> what the skip line says
    "string-values": (lambda d: make_run(d, rows=[{"epoch": 1, "val/top1": "high"}]),
                      "metrics.jsonl line 1: 'val/top1' is str 'high', not a number"),
    "string-epoch": (lambda d: make_run(d, rows=[{"epoch": "1", "val/top1": 1.0}]),
                     "'epoch' is str '1', not an integer"),
    "not-yaml": (lambda d: (make_run(d), (d / "config.yaml").write_text("model: [unclosed\n")),
                 "config.yaml: invalid YAML"),
    "not-utf8-config": (lambda d: (make_run(d), (d / "config.yaml").write_bytes(b"model: \xff\xfe cnn\n")),
                        "config.yaml is not UTF-8 text (invalid start byte at byte 7)"),
    "not-utf8-metrics": (lambda d: (make_run(d), (d / "metrics.jsonl").write_bytes(b'{"epoch": 1, "x": "\xff"}\n')),
                         "metrics.jsonl line 1 is not UTF-8"),
    "a-list-config": (lambda d: (make_run(d), (d / "config.yaml").write_text("- 1\n- 2\n")),
                      "config.yaml is a YAML list, not a run's config"),
    "alias-bomb": (lambda d: (make_run(d), (d / "config.yaml").write_text(laughs())), "aliases expand to more than"),
    "300k-lines": (lambda d: (make_run(d), (d / "metrics.jsonl").write_text('{"epoch": 1}\n' * 300_000)),
                   "metrics.jsonl has more than 200,000 lines"),
}


@pytest.mark.parametrize("case", BAD_RUNS)
def test_a_bad_run_is_left_out_with_one_line_and_the_rest_is_reported(tmp_path, capsys, case):
    make, why = BAD_RUNS[case]
    make_run(tmp_path / "runs" / "good")
    make(tmp_path / "runs" / case)
    started = time.monotonic()
    assert cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert err.count("kdkit: skipped") == 1 and "Traceback" not in err
    assert f"kdkit: skipped {tmp_path / 'runs' / case}: " in err and why in err, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "good" in md and "78.50" in md and "Left out" in md
    assert cli(["compare", str(tmp_path / "runs")]) == 0
    out, err = capsys.readouterr()
    assert "78.50" in out and why in err
    assert time.monotonic() - started < HANG_S  # (a hang guard only: the bounded reads take seconds)


@pytest.mark.parametrize("content,why", [
    ("{not json", "not JSON (Expecting property name"),
    (json.dumps([{"run": "a", "params": "1,000", "macs": 5}]), "row 0: params is '1,000', not a count"),
    (json.dumps([{"run": "a", "params": 10, "macs": "5M"}]), "row 0: macs is '5M', not a count"),
    (json.dumps([{"run": "a", "params": 10, "macs": 5, "ort_b1_ms": "fast"}]), "row 0: ort_b1_ms is 'fast'"),
    (json.dumps([{"run": "a", "params": 10, "macs": 5, "test_top1": [1]}]), "row 0: top1 is [1], not a number"),
    (b"\x89PNG\r\n", "summary.json is not UTF-8 text"),
])
def test_a_bad_summary_json_is_left_out(tmp_path, capsys, content, why):
    make_run(tmp_path / "p" / "good")
    path = tmp_path / "p" / "summary.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli(["report", str(tmp_path / "p"), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert f"kdkit: skipped {path}: " in err and why in err, err
    assert "78.50" in (tmp_path / "rep" / "report.md").read_text()
    assert cli(["report", str(path), "--out", str(tmp_path / "rep2")]) == 2  # nothing else: nothing to report
    assert "nothing to report" in capsys.readouterr().err


def test_names_from_files_are_escaped_for_mathtext_markdown_and_the_terminal(tmp_path, capsys):
    names = ["a$\\frac{$b", "<img src=x onerror=alert(1)>", "esc\x1b[31mred\x07", "_hidden"]
    for i, name in enumerate(names):
        make_run(tmp_path / "runs" / name, config={**CONFIG, "train": {"epochs": 2, "seed": i},
                                                    "model": {"name": "<b>cnn</b>"}})
    assert cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep")]) == 0  # mathtext did not raise
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "<img" not in md and "<b>" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert (tmp_path / "rep" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli(["compare", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "esc?[31mred?" in out and "a$\\frac{$b" in out


def test_out_errors_are_one_line(tmp_path, capsys):
    make_run(tmp_path / "runs" / "good")
    (tmp_path / "file").write_text("x")
    assert cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kdkit: error: the report folder (--out) {tmp_path / 'file'} exists and is not a folder"
    assert cli(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "file" / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kdkit: error: cannot create the report folder (--out) {tmp_path / 'file' / 'sub'}: ")
    assert "\n" not in err and (tmp_path / "file").read_text() == "x"


def test_an_alias_bomb_does_not_hang_a_fresh_process(tmp_path):
    make_run(tmp_path / "runs" / "good")
    make_run(tmp_path / "runs" / "bomb")
    (tmp_path / "runs" / "bomb" / "config.yaml").write_text(laughs(14))
    p = subprocess.run([sys.executable, "-m", "kdkit", "compare", str(tmp_path / "runs")], capture_output=True,
                       text=True, timeout=HANG_S)
    assert p.returncode == 0 and "aliases expand" in p.stderr and "78.50" in p.stdout
