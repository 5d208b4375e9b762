"""`kdkit sweep --storage postgresql://...` against a real PostgreSQL server: the test starts one in a
temporary folder (as the `postgres` user when it runs as root: initdb refuses root) and stops it after.
Two worker processes serve one sweep through it, as workers on several machines would.

Debian's `postgresql` package provides the server (`.ci/run` installs it). Where it is missing the test
is skipped, except under KDKIT_REQUIRE_POSTGRES=1 (CI), where a missing server is a failure."""

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kdkit.sweep import database_url, parse_sweep, run_sweep

BASE = {"model": "cnn_tiny", "data": {"name": "digits", "val_fraction": 0.2}, "optim": {"lr": 0.05},
        "train": {"epochs": 2, "seed": 0}}


def _binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if isinstance(found, list) and found else (found or None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("KDKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="kdkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres user
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgres_backed_sweep_with_two_workers(tmp_path, postgres):
    cfg = parse_sweep({"base": BASE, "space": {"optim.lr": {"log": [0.01, 0.5]}}, "trials": 4, "pruner": "none",
                       "seed": 0, "out": str(tmp_path / "pg"), "name": f"pg-{time.time_ns()}"})
    best = run_sweep(cfg, log=lambda m: None, storage=postgres, workers=2)
    trials = json.loads((tmp_path / "pg" / "sweep.json").read_text())["trials"]
    assert sorted(t["number"] for t in trials) == [0, 1, 2, 3] and all(t["state"] == "complete" for t in trials)
    assert len({t["worker"] for t in trials}) == 2  # both processes served the one study
    assert best["value"] == max(t["value"] for t in trials)
    assert not (tmp_path / "pg" / "journal.log").exists()  # the study lives in the database
    # the database holds the study: a third process sees every trial there, and best.yaml needs no run folder
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=database_url(postgres))
    assert len(study.trials) == 4 and study.best_trial.user_attrs["config"].startswith(
        (tmp_path / "pg" / "best.yaml").read_text()[:40])
    again = run_sweep(cfg, log=lambda m: None, storage=postgres)  # finished: nothing runs again
    assert again["number"] == best["number"] and again["value"] == best["value"]


def test_a_plain_postgres_url_uses_the_pinned_driver():
    assert database_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert database_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
