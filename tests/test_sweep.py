"""`kdkit sweep`: an Optuna search over a recipe's settings on the validation metric, every trial a kdkit
run. A 6-trial sweep on digits with a pruner writes best.yaml, and training from best.yaml reproduces the
best trial's validation metric exactly; a sweep killed in the middle of a trial and started again ends
with the same trials and best value as an uninterrupted one; bad sweep files are one-line errors before
any trial runs."""

import json
from pathlib import Path

import pytest
import yaml

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.sweep import parse_sweep, run_sweep

BASE = {"model": "cnn_tiny", "data": {"name": "digits", "val_fraction": 0.2}, "optim": {"lr": 0.05},
        "train": {"epochs": 3, "seed": 0}}


def _sweep(out, **over):
    data = {"base": BASE, "space": {"optim.lr": {"log": [0.001, 0.5]}, "optim.weight_decay": {"range": [0.0, 1e-3]}},
            "trials": 6, "sampler": "tpe", "pruner": "median", "seed": 0, "out": str(out), **over}
    return parse_sweep(json.loads(json.dumps(data)))


def _trials(out):
    return json.loads((Path(out) / "sweep.json").read_text())["trials"]


def test_a_sweep_writes_best_yaml_that_reproduces_the_best_trial(tmp_path):
    best = run_sweep(_sweep(tmp_path / "s"), log=lambda m: None)
    trials = _trials(tmp_path / "s")
    assert len(trials) == 6 and {t["state"] for t in trials} <= {"complete", "pruned", "fail"}
    assert best["value"] == max(t["value"] for t in trials if t["value"] is not None)
    cfg = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert cfg["train"]["threads"] >= 1 and cfg["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    cfg["train"].update({"out_dir": str(tmp_path), "run_name": "again"})
    again = from_config(load_config(base=cfg), log=lambda m: None).fit()
    rows = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rows if not r.get("final")][-1]["val/top1"] == best["value"]  # exactly
    assert again["epoch"] == 3


def test_a_pruner_stops_a_hopeless_trial(tmp_path):
    # the grid's order is fixed: two learning rates that learn (about 90% after an epoch), then one that
    # cannot (1e-6: chance, about 10%): the median pruner stops it after its first epoch, a margin no
    # processor's rounding changes
    run_sweep(_sweep(tmp_path / "p", space={"optim.lr": {"choice": [0.1, 0.05, 1e-6]}}, sampler="grid", trials=3,
                     pruner_warmup=1, base={**BASE, "train": {"epochs": 4, "seed": 0}}), log=lambda m: None)
    trials = _trials(tmp_path / "p")
    assert [t["params"]["optim.lr"] for t in trials] == [0.1, 0.05, 1e-6]
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    rows = (tmp_path / "p" / "trials" / "trial-0002" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["val/top1"] < 30  # stopped after epoch 1, no final line


def test_a_killed_sweep_continues_to_the_same_trials(tmp_path):
    full = run_sweep(_sweep(tmp_path / "full"), log=lambda m: None)
    killed = _sweep(tmp_path / "killed")
    import kdkit.sweep.run as sweep_mod

    real = sweep_mod._run_trial
    calls = []

    def dying(cfg, trial, params, run_dir, trainer_in, **kw):
        calls.append(trial.number)
        if trial.number == 3:  # killed during trial 3's second epoch
            def stop(trainer, epoch, metrics):
                if epoch == 2:
                    raise KeyboardInterrupt

            def trainer_in_stop(run_dir, recipe, **kw):
                return trainer_in(run_dir, recipe, **{**kw, "callbacks": [*kw["callbacks"], stop]})
            return real(cfg, trial, params, run_dir, trainer_in_stop, **kw)
        return real(cfg, trial, params, run_dir, trainer_in, **kw)

    sweep_mod._run_trial = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(killed, log=lambda m: None)
    finally:
        sweep_mod._run_trial = real
    assert calls == [0, 1, 2, 3]
    resumed = run_sweep(killed, log=lambda m: None)
    a, b = _trials(tmp_path / "full"), _trials(tmp_path / "killed")
    assert [t["params"] for t in a] == [t["params"] for t in b]
    assert [t["value"] for t in a] == [t["value"] for t in b] and resumed["value"] == full["value"]


@pytest.mark.parametrize("over, message", [
    ({"space": {"optim.nope": {"log": [0.1, 1]}}}, "space key 'optim.nope' is not a setting"),
    ({"space": {"optim.lr": {"range": [0.5, 0.1]}}}, "low must be below high"),
    ({"space": {"optim.lr": {"log": [0, 0.1]}}}, "a log range must be above 0"),
    ({"metric": "test/top1"}, "never a test one"),
    ({"base": {**BASE, "data": {"name": "digits", "val_fraction": 0.0}}}, "no validation split"),
    ({"sampler": "grid"}, "the grid sampler takes choice and int ranges only"),
    ({"trials": 0}, "trials must be an integer >= 1"),
    ({"pruner_warmup": 4}, "pruner_warmup must be an integer in"),
    ({"spaces": {}}, "unknown key"),
])
def test_bad_sweep_files_are_refused_before_any_trial(tmp_path, capsys, over, message):
    with pytest.raises(ConfigError, match=message):
        _sweep(tmp_path / "x", **over)
    path = tmp_path / "s.yaml"
    data = {"base": BASE, "space": {"optim.lr": {"log": [0.001, 0.5]}}, "out": str(tmp_path / "x"), **over}
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))))
    assert cli(["sweep", str(path)]) == 2
    assert message.split("'")[0] in capsys.readouterr().err and not (tmp_path / "x" / "trials").exists()


def test_sweep_from_the_cli(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "space": {"optim.lr": {"log": [0.01, 0.5]}}, "trials": 2,
                                    "pruner": "none", "out": str(tmp_path / "cli")}))
    assert cli(["sweep", str(path)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["best_yaml"].endswith("best.yaml")
    assert err.count("trial ") == 2 and "val/top1" in err


def test_two_workers_share_one_journal(tmp_path):
    best = run_sweep(_sweep(tmp_path / "w", trials=6, pruner="none"), log=lambda m: None, workers=2)
    trials = _trials(tmp_path / "w")
    assert sorted(t["number"] for t in trials) == list(range(6)) and all(t["state"] == "complete" for t in trials)
    assert len({t["worker"] for t in trials}) == 2  # both processes ran trials of the one study
    assert best["value"] == max(t["value"] for t in trials)
    assert all((tmp_path / "w" / "trials" / f"trial-{n:04d}" / "config.yaml").is_file() for n in range(6))


@pytest.mark.parametrize("storage, journal, message", [
    ("postgresql://nobody@127.0.0.1:1/none", None, "sweep storage postgresql://nobody@127.0.0.1:1/none"),
    (None, "hello, not a journal\n", "not an Optuna journal"),
])
def test_a_storage_that_cannot_be_used_is_one_line(tmp_path, storage, journal, message):
    cfg = _sweep(tmp_path / "b", trials=1)
    if journal:
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "journal.log").write_text(journal)
    with pytest.raises(ConfigError, match=message):
        run_sweep(cfg, log=lambda m: None, storage=storage)
    assert not (tmp_path / "b" / "trials").exists()  # before any trial


def test_a_terminal_sees_a_live_line_per_trial(tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run_sweep(_sweep(tmp_path / "t", trials=1, pruner="none"), log=lambda m: None)
    text = term.getvalue()
    lr = _trials(tmp_path / "t")[0]["params"]["optim.lr"]
    for epoch in (1, 2, 3):  # rewritten in place each epoch, then cleared for the finished trial's line
        assert f"\r\033[Ktrial 0: optim.lr={lr:.4g}" in text and f"epoch {epoch}/3, val/top1 " in text
    assert text.endswith("\r\033[K")


def test_another_sweeps_finished_trial_in_the_out_folder_is_one_line(tmp_path, teacher_ckpt):
    """A sweep started in a folder whose trial folders hold another sweep's finished runs (its journal
    deleted, the folder reused) stops with one line naming the folder, not a KeyError."""
    run_sweep(_sweep(tmp_path / "s", trials=1, pruner="none"), log=lambda m: None)
    (tmp_path / "s" / "journal.log").unlink()
    other = {**BASE, "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": "kd"}
    with pytest.raises(ConfigError, match="reports no val/agreement: the sweep folder .* holds another sweep's"):
        run_sweep(_sweep(tmp_path / "s", base=other, trials=1, pruner="none", metric="val/agreement"),
                  log=lambda m: None)
