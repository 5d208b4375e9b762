"""`kdkit report` and `kdkit compare` on real runs: every run is there, the mean ± std over seeds is the
one computed here from the runs' own metrics, a run still in progress says so, the plots are valid PNGs,
and the page loads in a headless browser with every image (when Chromium is installed)."""

import json
import shutil
import statistics
import subprocess

import pytest
import yaml
from conftest import HANG_S

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.report import collect, group_rows

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, teacher_ckpt):
    root = tmp_path_factory.mktemp("runs")
    base = {"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
            "train": {"epochs": 2, "progress": False, "out_dir": str(root)}}
    kd = {**base, "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": "kd"}
    for name, cfg in (("plain", base), ("kd", kd)):
        for seed in (0, 1):
            c = load_config(base={**cfg, "train": {**cfg["train"], "seed": seed, "run_name": f"{name}-s{seed}"}})
            from_config(c, log=lambda m: None).fit()

    def stop(trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    c = load_config(base={**kd, "train": {**kd["train"], "epochs": 3, "seed": 5, "run_name": "kd-killed"}})
    with pytest.raises(KeyboardInterrupt):
        from_config(c, log=lambda m: None, callbacks=[stop]).fit()
    return root


def _final(path):
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("final")][-1]


def test_report_has_every_run_and_the_right_mean_and_std(runs, tmp_path, capsys):
    assert cli(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    for name in ("plain-s0", "plain-s1", "kd-s0", "kd-s1", "kd-killed"):
        assert name in page and name in md
    assert "in progress (epoch 1 of 3)" in page
    for name in ("plain", "kd"):
        tops = [_final(runs / f"{name}-s{s}")["test/top1"] for s in (0, 1)]
        expected = f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f} (2)"
        assert expected in page and expected in md
    rows = {r["group"]: r for r in group_rows(collect([runs]))}
    assert rows["cnn_tiny kd (train.epochs=2)"]["finished"] == 2  # the killed run (3 epochs) is its own recipe
    assert rows["cnn_tiny kd (train.epochs=3)"]["finished"] == 0
    for png in ("curves.png", "loss_terms.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == PNG
    assert page.count("data:image/png;base64,") == 2  # self-contained: the plots are inside the page
    capsys.readouterr()
    assert cli(["compare", str(runs)]) == 0
    out = capsys.readouterr().out
    tops = [_final(runs / f"kd-s{s}")["test/top1"] for s in (0, 1)]
    assert f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f} (2)" in out and "kd-killed" in out


def test_costs_from_a_result_json(runs, tmp_path):
    result = {"rows": {"big": {"top1_mean": 91.0, "top1_std": 0.5, "params": 1000, "macs": 20000, "ort_b1_ms": 2.0},
                       "small": {"top1": [88.0], "top1_mean": 88.0, "params": 100, "macs": 2000, "ort_b1_ms": 0.5}}}
    (tmp_path / "r.json").write_text(json.dumps(result))
    assert cli(["report", str(tmp_path / "r.json"), str(runs / "kd-s0"), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "91.00 ± 0.50" in page and "20,000" in page
    assert (tmp_path / "rep" / "accuracy_latency.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "not a run directory"),
    (lambda p: (p / "x.json").write_text('{"rows": {}}') and p / "x.json", "no rows with params and macs"),
    (lambda p: (p / "bad.json").write_text("{") and p / "bad.json", "not JSON"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no run directories"),
])
def test_bad_report_inputs_exit_2(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert cli(["report", str(path), "--out", str(tmp_path / "rep")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here (.ci/run installs chromium-headless-shell)")
def test_the_page_loads_in_a_headless_browser_with_every_image(runs, tmp_path):
    assert cli(["report", str(runs), "--out", str(tmp_path / "rep")]) == 0
    url = (tmp_path / "rep" / "report.html").resolve().as_uri()
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=HANG_S)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-loaded="2/2"' in dom.stdout  # the page's own check: every image decoded
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2000", url], capture_output=True,
                   timeout=HANG_S)
    assert shot.read_bytes()[:8] == PNG


def test_yaml_of_a_run_is_read_flattened(runs):
    report = collect([runs / "kd-s0"])
    run = report.runs[0]
    assert run.config["method.0.name"] == "kd" and run.config["model.name"] == "cnn_tiny"
    assert yaml.safe_load((runs / "kd-s0" / "config.yaml").read_text())["train"]["seed"] == run.config["train.seed"]


def test_the_demo_prints_its_table_and_writes_its_report_and_runs_twice(tmp_path, capsys):
    for _ in range(2):  # a second demo into the same folder starts afresh
        assert cli(["demo", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for row in ("| teacher |", "| scratch, all images |", "| kd, all images |", "| scratch, 100 images |",
                "| kd, 100 images |"):
        assert row in out
    page = (tmp_path / "demo" / "report" / "report.html").read_text()
    assert str(tmp_path / "demo" / "report" / "report.html") in out and page.count("seed0-") >= 5
