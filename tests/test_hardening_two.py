"""Hardening, part two: runs that would overwrite or corrupt each other, a NaN guard that must not keep
exploded weights, values that silently did harm, data that failed late, start-up and disk failures.
Each case: the exit code, one error line, and that nothing already written changed."""

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import HANG_S
from test_bad_inputs import _idx_dir, check_refused, snapshot

import kdkit
from kdkit.cli import main as cli
from kdkit.config import load_config
from kdkit.engine import run_files
from kdkit.engine.checkpoint import load_checkpoint, save_atomic
from kdkit.errors import ConfigError, DivergedError

QUIET = {"log": lambda m: None}


def _cfg(tmp_path, **over):
    base = {"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
            "train": {"epochs": 2, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": "r"}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def _yaml(tmp_path, data, name="c.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(data))
    return tmp_path / name


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- two writers, one run


def test_a_run_directory_in_use_is_refused_to_a_second_run_and_to_a_resume(tmp_path, capsys):
    run = tmp_path / "runs" / "r"
    cfg = _yaml(tmp_path, _cfg(tmp_path))
    assert cli(["train", str(cfg), "--set", "train.epochs=1"]) == 0  # a stopped-or-finished run to resume
    before = snapshot(run)
    held = run_files.lock_run(run)  # another process's lock (flock: another open file conflicts likewise)
    try:
        for argv, code in ((["train", cfg, "--overwrite"], 2), (["train", "--resume", run, "--epochs", "2"], 2)):
            check_refused(capsys, argv, code, [run, "in use by another kdkit run (pid"])
        assert snapshot(run) == before
    finally:
        held.release()
    assert cli(["train", "--resume", str(run), "--epochs", "2"]) == 0  # free again


def test_two_processes_on_one_run_directory(tmp_path):
    cfg = _yaml(tmp_path, _cfg(tmp_path, train={"epochs": 30}))
    run = tmp_path / "runs" / "r"
    a = subprocess.Popen([sys.executable, "-m", "kdkit", "train", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + HANG_S
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip()):
        assert time.time() < deadline and a.poll() is None, "the first run did not start"
        time.sleep(0.05)
    b = subprocess.run([sys.executable, "-m", "kdkit", "train", "--resume", str(run)], capture_output=True,
                       text=True, timeout=HANG_S)
    assert a.wait(timeout=HANG_S) == 0
    if "is finished" not in b.stderr:  # the usual case: the first run still held the directory
        assert b.returncode == 2 and "in use by another kdkit run" in b.stderr and "Traceback" not in b.stderr
    assert [r.get("epoch") for r in _lines(run)] == list(range(1, 31)) + [30]  # every epoch once


def test_a_checkpoint_replaced_while_a_resume_starts_is_refused(tmp_path):
    cfg = load_config(base=_cfg(tmp_path, train={"epochs": 3}))

    def stop(trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kdkit.from_config(cfg, callbacks=[stop], **QUIET).fit()
    run = tmp_path / "runs" / "r"
    trainer = kdkit.resume(run, **QUIET)  # read epoch 1 ...
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    save_atomic(ckpt, run / "checkpoint.pt")  # ... then another run wrote the file again
    with pytest.raises(ConfigError, match="was replaced by another run while this one was starting"):
        trainer.fit()
    assert [r["epoch"] for r in _lines(run)] == [1]


# ----------------------------------------------------------------------------- the shared teacher cache


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npy"))}


def test_a_shared_teacher_cache_is_never_rewritten_under_another_run(tmp_path, teacher_ckpt, capsys):
    cache = tmp_path / "shared"
    cache.mkdir()
    (cache / "meta.json").write_text('{"mine": true}')  # the user's own file in the folder: never touched
    opts = {"teacher_cache": {"store": "disk", "path": str(cache)}}
    kd = _cfg(tmp_path, method="kd", data={"augment": False}, teacher={"name": "cnn_small",
                                                                         "checkpoint": teacher_ckpt})
    a = kdkit.from_config(load_config(base={**kd, "train": {**kd["train"], **opts, "run_name": "a"}}), **QUIET)
    a.fit()
    (folder_a,) = [d for d in cache.iterdir() if d.is_dir() and d.name != "eval"]
    before = _sha(folder_a)
    # a second teacher (other weights): its outputs go to a folder of their own
    other = tmp_path / "other.pt"
    ck = load_checkpoint(teacher_ckpt)
    ck["student"] = {k: v * 0.5 if v.is_floating_point() else v for k, v in ck["student"].items()}
    torch.save(ck, other)
    b = kdkit.from_config(load_config(base={**kd, "teacher": {"name": "cnn_small", "checkpoint": str(other)},
                                             "train": {**kd["train"], **opts, "run_name": "b"}}), **QUIET)
    b.fit()
    assert len([d for d in cache.iterdir() if d.is_dir() and d.name != "eval"]) == 2
    assert _sha(folder_a) == before and (cache / "meta.json").read_text() == '{"mine": true}'


def test_a_cache_in_use_is_not_rebuilt_under_its_reader(tmp_path, teacher_ckpt, monkeypatch):
    from kdkit.engine import cache as cache_mod

    cache = tmp_path / "c"
    kd = _cfg(tmp_path, method="kd", data={"augment": False}, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
              train={"teacher_cache": {"store": "disk", "path": str(cache)}})
    kdkit.from_config(load_config(base=kd), **QUIET).fit()
    (folder,) = [d for d in cache.iterdir() if d.is_dir() and d.name != "eval"]
    reader = kdkit.from_config(load_config(base={**kd, "train": {**kd["train"], "run_name": "reader"}}), **QUIET)
    reader._build_cache()  # a run reading the cache (it holds the shared lock until it ends)
    before = _sha(folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["complete"] = False  # the cache now looks unfinished to the next run, which would refill it
    (folder / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(cache_mod, "LOCK_WAIT_S", 0.5)
    writer = kdkit.from_config(load_config(base={**kd, "train": {**kd["train"], "run_name": "w"}}), **QUIET)
    with pytest.raises(ConfigError, match="stayed in use by another run"):
        writer.fit()
    assert _sha(folder) == before  # not a byte rewritten under the reader
    reader.cache.release()


# ----------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("name", ["../../x", "/tmp/kdkit-abs-run", "a/../../b", "~/x"])
def test_run_names_stay_inside_out_dir(tmp_path, capsys, name):
    cfg = _yaml(tmp_path, _cfg(tmp_path, train={"run_name": name}))
    check_refused(capsys, ["train", cfg], 2, ["run_name must be a name inside out_dir"])
    assert not (tmp_path / "runs").exists() and not Path("/tmp/kdkit-abs-run").exists()


def test_out_into_a_folder_with_the_users_config_is_refused(tmp_path, capsys):
    own = tmp_path / "project"
    own.mkdir()
    (own / "config.yaml").write_text("learning_rate: 3\n")
    cfg = _yaml(tmp_path, _cfg(tmp_path))
    for extra in ([], ["--overwrite"]):
        check_refused(capsys, ["train", cfg, "--out", own, *extra], 2, [own, "not a kdkit run's"])
    assert [p.name for p in own.iterdir()] == ["config.yaml"] and "learning_rate" in (own / "config.yaml").read_text()


def test_an_uncreatable_output_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cfg = _yaml(tmp_path, _cfg(tmp_path))
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "file" / "run"], 2, ["cannot create the run directory"])


# ----------------------------------------------------------------------------- the NaN guard


@pytest.mark.parametrize("blow_up", ["weights", "val-loss"])
def test_an_epoch_that_ends_exploded_is_not_saved(tmp_path, blow_up):
    cfg = load_config(base=_cfg(tmp_path, train={"epochs": 3}))
    trainer = kdkit.from_config(cfg, **QUIET)
    evaluate = trainer._evaluate_epoch

    def exploding():  # the last update of epoch 2 blew up (e.g. one huge learning-rate step)
        metrics = evaluate()
        if trainer.epoch == 2:
            if blow_up == "weights":
                with torch.no_grad():
                    next(trainer.distiller.student.parameters()).fill_(float("inf"))
            else:
                metrics["val/loss"] = float("nan")
        return metrics

    trainer._evaluate_epoch = exploding
    with pytest.raises(DivergedError, match="after epoch 2, .*training stopped before saving that epoch, the last "
                                            "good checkpoint is kept"):
        trainer.fit()
    run = tmp_path / "runs" / "r"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and load_checkpoint(run / "best.pt")["epoch"] == 1
    assert [r["epoch"] for r in _lines(run)] == [1] and "NaN" not in (run / "metrics.jsonl").read_text()
    assert all(bool(torch.isfinite(v).all()) for v in load_checkpoint(run / "best.pt")["student"].values()
               if v.is_floating_point())


# ----------------------------------------------------------------------------- killed between writes


@pytest.mark.parametrize("when", ["before best.pt", "before the metrics line"])
def test_a_kill_between_the_checkpoint_and_best_or_metrics_resumes_consistently(tmp_path, monkeypatch, when):
    from kdkit.engine import trainer as trainer_mod

    cfg = _cfg(tmp_path, train={"epochs": 3})
    full = kdkit.from_config(load_config(base={**cfg, "train": {**cfg["train"], "run_name": "full"}}), **QUIET)
    full.fit()
    real_save, real_write = trainer_mod.save_atomic, trainer_mod.Trainer._write_metrics

    def save(obj, path):
        if Path(path).name == "best.pt" and obj["epoch"] == 2 and when == "before best.pt":
            raise KeyboardInterrupt  # killed right after checkpoint.pt was renamed into place
        return real_save(obj, path)

    def write(self, metrics):
        if metrics.get("epoch") == 2 and not metrics.get("final") and when == "before the metrics line":
            raise KeyboardInterrupt
        return real_write(self, metrics)

    monkeypatch.setattr(trainer_mod, "save_atomic", save)
    monkeypatch.setattr(trainer_mod.Trainer, "_write_metrics", write)
    with pytest.raises(KeyboardInterrupt):
        kdkit.from_config(load_config(base=cfg), **QUIET).fit()
    monkeypatch.setattr(trainer_mod, "save_atomic", real_save)
    monkeypatch.setattr(trainer_mod.Trainer, "_write_metrics", real_write)
    run = tmp_path / "runs" / "r"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    kdkit.resume(run, **QUIET).fit()
    got, want = _lines(run), _lines(tmp_path / "runs" / "full")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]  # noqa: E731
    assert strip(got) == strip(want)  # every epoch's line once, the same as an uninterrupted run
    best, best_full = (load_checkpoint(d / "best.pt") for d in (run, tmp_path / "runs" / "full"))
    assert best["epoch"] == best_full["epoch"] and all(torch.equal(best["student"][k], best_full["student"][k])
                                                       for k in best["student"])


# ----------------------------------------------------------------------------- values that did harm


VALUES = {
    "optim.momentum=-0.5": "momentum must be in [0, 1)",
    "optim.weight_decay=-1": "weight_decay must be >= 0",
    "optim.betas=[0.9,1.5]": "betas must be two numbers in [0, 1)",
    "schedule.warmup_epochs=-5": "warmup_epochs must be >= 0",
    "schedule.min_lr=-1": "min_lr must be >= 0",
    "schedule.gamma=0": "gamma must be in (0, 1]",
    "schedule.milestones=[3,2]": "milestones must be increasing",
    "train.grad_clip=-1": "grad_clip must be > 0",
    "train.eval_every=0": "eval_every must be >= 1",
    "train.eval_every=-1": "eval_every must be >= 1",
    "train.threads=0": "threads must be in [1, 4096]",
    "data.std=[0.0]": "mean and std are set together",
}


@pytest.mark.parametrize("override", list(VALUES))
def test_values_that_silently_did_harm_are_refused(tmp_path, capsys, override):
    cfg = _yaml(tmp_path, _cfg(tmp_path))
    check_refused(capsys, ["train", cfg, "--set", override], 2, [VALUES[override]])
    assert not (tmp_path / "runs").exists()


def test_duplicate_yaml_keys_and_demo_epochs_zero(tmp_path, capsys):
    (tmp_path / "d.yaml").write_text("model: cnn_tiny\ndata: {name: digits}\nmodel: cnn_small\n")
    check_refused(capsys, ["train", tmp_path / "d.yaml"], 2, ["duplicate key 'model' (lines 1 and 3)"])
    check_refused(capsys, ["demo", "--epochs", "0", "--out", tmp_path / "demo"], 2, ["--epochs must be >= 1"])
    assert not (tmp_path / "demo").exists()


def _folder_like_digits(root):
    """A 10-class folder dataset of 8x8 greyscale images: the shape of digits, other data."""
    from PIL import Image

    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), color=(c * 20 + i) % 256).save(root / str(c) / f"{i}.png")
    return root


def test_a_teacher_trained_on_other_data_is_refused(tmp_path, capsys, teacher_ckpt):
    teacher = {"name": "cnn_small", "checkpoint": teacher_ckpt}
    folder = _folder_like_digits(tmp_path / "imgs")
    other = _yaml(tmp_path, _cfg(tmp_path, method="kd", teacher=teacher,
                                 data={"name": "folder", "root": str(folder), "image_size": 8}))
    check_refused(capsys, ["distill", other], 4, ["was trained on digits [1, 8, 8]", "folder [1, 8, 8]",
                                                  "other_data: true"])
    renorm = _yaml(tmp_path, _cfg(tmp_path, method="kd", teacher=teacher, data={"mean": [0.0], "std": [1.0]}), "n.yaml")
    check_refused(capsys, ["distill", renorm], 4, ["normalised with mean", "set data.mean and data.std"])
    assert not (tmp_path / "runs").exists()
    check_refused(capsys, ["distill", renorm, "--set", "teacher.other_data=true"], 0, [])


# ----------------------------------------------------------------------------- data that failed late


def test_idx_test_labels_out_of_range_and_float_images_fail_before_training(tmp_path, capsys):
    from kdkit.data.idx import write_idx

    folder = _idx_dir(tmp_path / "mnist")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12], dtype=np.uint8))
    cfg = _yaml(tmp_path, {"model": "cnn_tiny", "data": {"name": "mnist", "root": str(folder), "verify": False,
                                                         "download": False}})
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "run"], 3, ["t10k-labels-idx1-ubyte", "up to 12"])
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(10) % 10)
    floats = np.zeros((30, 28, 28), dtype=">f4")  # an IDX file of float32 images (type code 0x0D)
    (folder / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 0x0D, 3]) + np.array(floats.shape, ">u4").tobytes()
                                                     + floats.tobytes())
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "run"], 3,
                  ["train-images-idx3-ubyte", "images are >f4, expected uint8"])
    assert not (tmp_path / "run").exists()


def test_a_test_class_missing_from_train_is_refused(tmp_path, capsys):
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("test", ("a", "b", "c"))):
        for c in classes:
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / "imgs" / split / c / "0.png")
    cfg = _yaml(tmp_path, _cfg(tmp_path, data={"name": "folder", "root": str(tmp_path / "imgs"), "image_size": 8}))
    check_refused(capsys, ["train", cfg], 3, ["has class folders that", "lacks: c"])


def test_a_decompression_bomb_png_is_refused(tmp_path, capsys):
    from PIL import Image

    folder = _folder_like_digits(tmp_path / "imgs")
    Image.new("1", (20000, 20000)).save(folder / "3" / "bomb.png")  # 400 Mpixels in a few KiB
    assert (folder / "3" / "bomb.png").stat().st_size < 200_000
    cfg = _yaml(tmp_path, _cfg(tmp_path, data={"name": "folder", "root": str(folder), "image_size": 8}))
    check_refused(capsys, ["train", cfg], 3, ["bomb.png"])


def test_a_huge_image_size_is_refused_before_memory_runs_out(tmp_path, capsys):
    folder = _folder_like_digits(tmp_path / "imgs")
    cfg = _yaml(tmp_path, _cfg(tmp_path, data={"name": "folder", "root": str(folder), "image_size": 4096,
                                               "batch_size": 512}))
    check_refused(capsys, ["train", cfg], 2, ["GiB as floats", "lower data.batch_size or data.image_size"])
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- start-up and disk


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.45, 0.6, 1.0])
def test_ctrl_c_in_the_first_instant(tmp_path, delay):
    cfg = _yaml(tmp_path, _cfg(tmp_path, train={"epochs": 200}))
    # started as from a terminal, SIGINT at its default (a test run in the background of a script inherits it
    # ignored: then an interrupt before kdkit's handler was lost, and the run went on, as kdkit now means it to)
    p = subprocess.Popen([sys.executable, "-m", "kdkit", "train", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_sigint(signal.SIG_DFL))
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=HANG_S)
    # the signal may come before kdkit's first line runs: before Python has started (killed, no output at all)
    # or, on a loaded machine, during Python's own start-up (site, runpy), which ends in its KeyboardInterrupt
    # (killed by the signal, or exit 1 with "Fatal Python error: init_import_site") with no frame in kdkit
    # or in kdkit/__main__.py's own lines before its handler is installed (a few microseconds), or in the
    # package's __init__.py, which `python -m kdkit` runs before __main__.py (it imports nothing: microseconds)
    package = str(Path(kdkit.__file__).resolve().parent)
    main, init = Path(package) / "__main__.py", Path(package) / "__init__.py"
    handler_line = next(i for i, line in enumerate(main.read_text().splitlines(), 1) if "_leave_now)" in line)
    frames = [line for line in err.splitlines() if line.strip().startswith("File ")]
    kdkit_frames = [f for f in frames if package in f]
    before_handler = len(kdkit_frames) == 1 and (
        str(init) in kdkit_frames[0] and "in <module>" in kdkit_frames[0]
        or str(main) in kdkit_frames[0] and int(re.search(r"line (\d+)", kdkit_frames[0]).group(1)) <= handler_line)
    in_python_start_up = "\nKeyboardInterrupt" in err and frames and (not kdkit_frames or before_handler)
    before_kdkit = (p.returncode == -signal.SIGINT and err == ""
                    or p.returncode in (-signal.SIGINT, 1) and in_python_start_up)
    if not before_kdkit:
        assert p.returncode == 130 and "Traceback" not in err, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("kdkit: interrupted")


def _sigint(disposition):
    """A Popen ``preexec_fn``: the child starts with SIGINT at ``disposition``."""
    return lambda: signal.signal(signal.SIGINT, disposition)


def test_a_run_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path):
    """A background job of a script (``kdkit train ... &``) starts with SIGINT ignored: the terminal's Ctrl-C,
    meant for the script, does not stop it (Python leaves an ignored SIGINT ignored; kdkit's handlers too)."""
    cfg = _yaml(tmp_path, _cfg(tmp_path, train={"epochs": 200}))
    p = subprocess.Popen([sys.executable, "-m", "kdkit", "train", str(cfg)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_sigint(signal.SIG_IGN))
    try:
        epochs = (line for line in p.stderr if line.startswith("epoch "))
        assert next(epochs).startswith("epoch 1/200")  # training, past start-up
        p.send_signal(signal.SIGINT)
        assert next(epochs).startswith("epoch 2/200") and p.poll() is None  # the next epoch finished: not stopped
    finally:
        p.kill()
        p.communicate(timeout=HANG_S)


def test_a_full_disk_at_checkpoint_time_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    from kdkit.engine import checkpoint as ckpt_mod

    cfg = _yaml(tmp_path, _cfg(tmp_path, train={"epochs": 3}))
    run = tmp_path / "runs" / "r"
    real = torch.save

    def full_disk(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"x" * 100)  # a part of it made it to disk
            raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    check_refused(capsys, ["train", cfg], 6, ["cannot write", "checkpoint.pt", "is the disk full?",
                                              "the previous checkpoint.pt is kept"])
    monkeypatch.setattr(ckpt_mod.torch, "save", real)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and [r["epoch"] for r in _lines(run)] == [1]
    assert not list(run.glob(".*.tmp"))
    assert cli(["train", "--resume", str(run)]) == 0 and load_checkpoint(run / "checkpoint.pt")["epoch"] == 3
