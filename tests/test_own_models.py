"""Bring your own teacher and models: plain state dicts and safetensors teachers, ``module:Class`` models
through the CLI and ``kdkit eval``, tuple/dict/attribute outputs, ordinary DataLoaders, YAML floats, the
progress bar on a terminal, layer suggestions, run-directory management, bench output, and the README's
"Distil your own model" section run as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import HANG_S
from torch import nn

import kdkit
from kdkit.cli import main as cli
from kdkit.config import load_config
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NETS = """
from dataclasses import dataclass

import torch
from torch import nn

import kdkit


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


@dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class WithOutput(Net):
    def forward(self, x):
        h = self.body(x)
        return Output(self.head(h), h)


class Thousand(Net):
    def __init__(self):
        super().__init__(num_classes=1000)


def make(num_classes=10, width=8):
    return Net(num_classes, width)


@kdkit.register_model(__name__ + "_made")
def registered(num_classes=10, in_channels=1, width=8):
    return Net(num_classes, width)


def not_a_model():
    return 42
"""


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("kdkit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A user module (a unique name per test) importable from ``tmp_path``; its name."""
    name = f"usernets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _cfg(tmp_path, **over):
    base = {"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "runs")}}
    base.update(over)
    return base


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ----------------------------------------------------------------------------- pretrained teachers


@pytest.fixture
def plain_teacher(tmp_path, teacher_ckpt):
    """The session's cnn_small teacher saved as a plain state dict (as a PyTorch project would) and its
    test top-1 as kdkit measured it."""
    ckpt = load_checkpoint(teacher_ckpt)
    path = tmp_path / "teacher_state.pt"
    torch.save(ckpt["student"], path)
    final = [json.loads(line) for line in (Path(teacher_ckpt).parent / "metrics.jsonl").read_text().splitlines()][-1]
    return path, ckpt["student"], final["test/top1"]


def _distil(tmp_path, teacher, name="s", **over):
    cfg = load_config(base=_cfg(tmp_path, teacher=teacher, method="kd", train={
        "epochs": 1, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": name}, **over))
    return kdkit.from_config(cfg, log=lambda m: None)


def test_a_plain_state_dict_teacher_gives_the_same_agreement_as_the_kdkit_checkpoint(tmp_path, teacher_ckpt,
                                                                                        plain_teacher):
    path, weights, _ = plain_teacher
    a = _distil(tmp_path, {"name": "cnn_small", "checkpoint": str(path)}, "plain").fit()
    b = _distil(tmp_path, {"name": "cnn_small", "checkpoint": teacher_ckpt}, "kdkit").fit()
    assert a["test/agreement"] == b["test/agreement"] and a["test/top1"] == b["test/top1"]
    # nested under "state_dict" with DataParallel's "module." prefix, as training tools save them
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, tmp_path / "nested.pt")
    t = _distil(tmp_path, {"name": "cnn_small", "checkpoint": str(tmp_path / "nested.pt")}, "nested")
    assert all(torch.equal(t.distiller.teachers[0].state_dict()[k], v) for k, v in weights.items())


def test_a_safetensors_teacher(tmp_path, plain_teacher):
    from safetensors.torch import save_file

    _, weights, _ = plain_teacher
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp_path / "t.safetensors"))
    t = _distil(tmp_path, {"name": "cnn_small", "checkpoint": str(tmp_path / "t.safetensors")})
    assert all(torch.equal(t.distiller.teachers[0].state_dict()[k], v) for k, v in weights.items())


def test_weights_that_do_not_fit_are_listed_and_strict_false_loads_the_rest(tmp_path, plain_teacher, capsys):
    _, weights, _ = plain_teacher
    bad = dict(weights)
    bad.pop("fc.bias")
    bad["extra.weight"] = torch.zeros(3)
    bad["fc.weight"] = torch.zeros(5, bad["fc.weight"].shape[1])
    torch.save(bad, tmp_path / "bad.pt")
    teacher = {"name": "cnn_small", "checkpoint": str(tmp_path / "bad.pt")}
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, teacher=teacher, method="kd"))
    assert cli(["distill", cfg]) == 4
    msg = _one_line(capsys.readouterr().err)
    assert "1 missing (fc.bias)" in msg and "1 unexpected (extra.weight)" in msg
    assert "1 of another shape (fc.weight [5, 64] vs [10, 64])" in msg and "strict: false" in msg
    assert not (tmp_path / "runs").exists()  # refused before any file was written
    with pytest.warns(UserWarning, match="not loaded: 1 missing"):
        t = _distil(tmp_path, {**teacher, "strict": False})
    got = t.distiller.teachers[0].state_dict()
    assert torch.equal(got["stage1.0.weight"], weights["stage1.0.weight"])
    assert not torch.equal(got["fc.weight"], weights["fc.weight"])  # left as initialised


@pytest.mark.parametrize("content,message", [
    (lambda p: torch.save({"epoch": 3}, p), "neither a kdkit checkpoint nor a state dict"),
    (lambda p: p.write_bytes(b"not a zip"), "neither a kdkit checkpoint nor a weights file"),
    (lambda p: torch.save({"w": torch.tensor([float("nan")])}, p), "none of its 1 weights fits"),
])
def test_bad_weight_files_exit_4(tmp_path, capsys, content, message):
    content(tmp_path / "w.pt")
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": str(tmp_path / "w.pt"),
                                                              "strict": False}, method="kd"))
    assert cli(["distill", cfg]) == 4
    assert message in _one_line(capsys.readouterr().err)


def test_timm_names_go_through_timm_create_model(tmp_path, monkeypatch):
    """timm is not installed here (it needs torchvision): a stand-in module records the call kdkit makes."""
    import types

    calls = []

    def create_model(name, num_classes, in_chans, **kwargs):
        calls.append((name, num_classes, in_chans, kwargs))
        if name != "tiny":
            raise RuntimeError(f"Unknown model ({name})")
        return kdkit.create_model("cnn_tiny", num_classes=num_classes, in_channels=in_chans)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    net = kdkit.create_model("timm:tiny", num_classes=7, in_channels=1, drop_rate=0.1)
    assert isinstance(net, nn.Module) and calls == [("tiny", 7, 1, {"pretrained": False, "drop_rate": 0.1})]
    for bad in ("pretrained", "checkpoint_path", "pretrained_cfg_overlay", "cache_dir"):  # weights, files, hubs
        with pytest.raises(ConfigError, match=f"argument\\(s\\) {bad} refused: a library model gets architecture"):
            kdkit.create_model("timm:tiny", **{bad: "x"})
    assert len(calls) == 1
    with pytest.raises(ConfigError, match=r"model 'timm:nope': Unknown model \(nope\)"):
        kdkit.create_model("timm:nope")
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ConfigError, match="timm is not installed"):
        kdkit.create_model("timm:tiny")


# ----------------------------------------------------------------------------- module:Class models


def test_module_class_models_through_the_cli_and_eval(tmp_path, nets, capsys, monkeypatch):
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, model={"name": f"{nets}:Net", "kwargs": {"width": 4}},
                                           train={"epochs": 2, "progress": False, "run_name": "mine",
                                                  "out_dir": str(tmp_path / "runs")}))
    assert cli(["train", cfg]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ckpt = load_checkpoint(tmp_path / "runs" / "mine" / "checkpoint.pt")
    assert ckpt["model"]["name"] == f"{nets}:Net" and ckpt["model"]["kwargs"] == {"width": 4}
    assert cli(["eval", str(tmp_path / "runs" / "mine" / "checkpoint.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(trained["test/top1"])
    assert cli(["inspect", f"{nets}:Net", "--input-shape", "1,8,8"]) == 0
    assert "body.3" in capsys.readouterr().out


def test_registered_factories_run_plain_functions_never(tmp_path, nets, capsys, monkeypatch):
    """A factory runs when the user registered it (by its registered name, or as module:function);
    a plain function of the user's module is refused like os:system, before it is called."""
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, model=f"{nets}:registered", train={
        "epochs": 1, "progress": False, "run_name": "f", "out_dir": str(tmp_path / "runs")}))
    assert cli(["train", cfg]) == 0
    ckpt = str(tmp_path / "runs" / "f" / "checkpoint.pt")
    capsys.readouterr()
    monkeypatch.setattr("kdkit.models.external._TRUSTED", set())
    assert cli(["eval", ckpt]) == 4
    assert f"pass --plugin {nets}" in _one_line(capsys.readouterr().err)
    assert cli(["--plugin", nets, "eval", ckpt]) == 0
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, model=f"{nets}:make"))
    assert cli(["train", cfg]) == 2
    assert f"'{nets}.make' is a function, not an nn.Module subclass" in _one_line(capsys.readouterr().err)


def test_a_checkpoint_cannot_make_kdkit_call_a_function(tmp_path, teacher_ckpt, capsys, monkeypatch):
    """A tampered checkpoint naming subprocess:run (with arguments in its kwargs) is refused before
    anything is called, even when the user trusts subprocess."""
    ckpt = load_checkpoint(teacher_ckpt)
    marker = tmp_path / "ran"
    ckpt["config"]["model"] = {"name": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}}
    ckpt["model"]["name"] = "subprocess:run"
    torch.save(ckpt, tmp_path / "evil.pt")
    monkeypatch.setattr("kdkit.models.external._TRUSTED", set())
    assert cli(["eval", str(tmp_path / "evil.pt")]) == 4
    assert "module 'subprocess' was not imported on your word" in _one_line(capsys.readouterr().err)
    assert cli(["--plugin", "subprocess", "eval", str(tmp_path / "evil.pt")]) == 4
    assert "'subprocess.run' is a function, not an nn.Module subclass" in _one_line(capsys.readouterr().err)
    assert not marker.exists()


@pytest.mark.parametrize("name,message", [
    ("no_such_module_xyz:Net", "cannot import 'no_such_module_xyz'"),
    ("os:system", "'os.system' is a function, not an nn.Module subclass"),
    ("{nets}:Nte", "has no 'Nte'; did you mean 'Net'"),
    ("{nets}:not_a_model", "'{nets}.not_a_model' is a function, not an nn.Module subclass"),
    ("{nets}:Net:x", "expected 'package.module:Class'"),
    ("{nets}:Thousand", "gives outputs of shape [1000] per image, but digits has 10 classes"),
])
def test_bad_module_models_are_refused_before_the_run_starts(tmp_path, nets, capsys, name, message):
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, model=name.format(nets=nets)))
    assert cli(["train", cfg]) == 2
    assert message.format(nets=nets) in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_an_output_object_gives_its_logits_attribute(tmp_path, nets):
    cfg = load_config(base=_cfg(tmp_path, model=f"{nets}:WithOutput", train={
        "epochs": 2, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": "o"}))
    result = kdkit.from_config(cfg, log=lambda m: None).fit()
    assert result["test/top1"] > 50
    cfg = load_config(base=_cfg(tmp_path, model={"name": f"{nets}:WithOutput", "output": "hidden"}))
    with pytest.raises(ConfigError, match=r"gives outputs of shape \[8, 4, 4\] per image"):
        kdkit.from_config(cfg, log=lambda m: None)


# ----------------------------------------------------------------------------- DataLoaders


def test_evaluate_and_training_on_ordinary_dataloaders(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    (x, y), (xt, yt) = kdkit.load_tensors("digits")
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1 and x.shape[1:] == (1, 8, 8)
    assert len(x) == 1438 and len(xt) == 359
    train, test = (DataLoader(TensorDataset(a, b), batch_size=100, shuffle=True) for a, b in ((x, y), (xt, yt)))
    ds = kdkit.dataset_from_loaders(train, test, name="mine")
    assert ds.num_classes == 10 and len(ds.train) == 1438
    with pytest.raises(ConfigError, match="data.name is 'digits' but the dataset given is 'mine'"):
        kdkit.from_config(load_config(base=_cfg(tmp_path)), dataset=ds)
    cfg = load_config(base=_cfg(tmp_path, data={"name": "mine"}, train={
        "epochs": 3, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": "dl"}))
    trainer = kdkit.from_config(cfg, dataset=ds, log=lambda m: None)
    result = trainer.fit()
    model = trainer.distiller.student
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    normalised = DataLoader(TensorDataset((xt - mean) / std, yt), batch_size=64)  # as kdkit feeds the model
    plain = kdkit.evaluate(model, normalised)  # a torch DataLoader of (x, y): same test images, same answer
    assert plain["top1"] == pytest.approx(result["test/top1"]) and result["test/top1"] > 80
    with pytest.raises(ConfigError, match=r"float images must be in \[0, 1\]"):
        kdkit.dataset_from_loaders([(x * 5 - 1, y)], [(xt, yt)])


# ----------------------------------------------------------------------------- config numbers, bar, layers


def test_every_float_notation_in_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: cnn_tiny\noptim: {lr: 3e-4, weight_decay: 5E-4}\nschedule: {min_lr: 1e-6}\n")
    cfg = load_config(path, ["optim.momentum=9e-1", "schedule.gamma=.5e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.min_lr) == (3e-4, 5e-4, 1e-6)
    assert (cfg.optim.momentum, cfg.schedule.gamma) == (0.9, 0.05)
    assert load_config(path, ["train.epochs=3"]).train.epochs == 3  # integers stay integers
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(path, ["train.epochs=1e3"])


def test_the_progress_bar_shows_loss_and_lr_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, train={"epochs": 1, "log_every": 2, "out_dir": str(tmp_path)}))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal 120 columns wide
    p = subprocess.Popen([sys.executable, "-m", "kdkit", "train", cfg], stderr=slave, stdout=subprocess.PIPE,
                         cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=HANG_S) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"loss=\d+\.\d{4}, lr=\d", text), text[-2000:]


def test_a_misspelled_layer_in_a_config_names_the_method_the_network_and_the_closest_paths(tmp_path, teacher_ckpt,
                                                                                           capsys):
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                                           method={"name": "fitnets", "student_layer": "stage22",
                                                   "teacher_layer": "stage2"}))
    assert cli(["distill", cfg]) == 2
    msg = _one_line(capsys.readouterr().err)
    assert "method fitnets: no module 'stage22' of the student (SmallCNN)" in msg and "did you mean 'stage2" in msg


# ----------------------------------------------------------------------------- run management


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rerun_overwrite_new_dir_resume_finished_and_extend(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, train={"epochs": 2, "progress": False, "run_name": "r",
                                                            "out_dir": str(tmp_path / "runs")}))
    run = tmp_path / "runs" / "r"
    assert cli(["train", cfg]) == 0
    before = (run / "checkpoint.pt").read_bytes()
    assert cli(["train", cfg]) == 2  # the same command again: refused, nothing touched
    assert "--overwrite" in _one_line(capsys.readouterr().err) and (run / "checkpoint.pt").read_bytes() == before
    # resuming a finished run does nothing: no second evaluation, no second final line
    metrics = (run / "metrics.jsonl").read_text()
    assert cli(["train", "--resume", str(run)]) == 0
    assert (run / "metrics.jsonl").read_text() == metrics and "is finished (2 epochs)" in capsys.readouterr().err
    # extend it to 3 epochs: one line per epoch, one final line, for epoch 3
    assert cli(["train", "--resume", str(run), "--epochs", "3"]) == 0
    rows = _lines(run)
    assert [r.get("epoch") for r in rows if not r.get("final")] == [1, 2, 3]
    assert [r["epoch"] for r in rows if r.get("final")] == [3]
    assert rows[:2] == [json.loads(line) for line in metrics.splitlines()][:2]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 3 and "epochs: 3" in (run / "config.yaml").read_text()
    assert cli(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "has completed 3 epochs" in _one_line(capsys.readouterr().err)
    # --new-dir keeps it; --overwrite replaces kdkit's files only
    assert cli(["train", cfg, "--new-dir"]) == 0 and (tmp_path / "runs" / "r-2" / "checkpoint.pt").is_file()
    assert cli(["train", cfg, "--new-dir"]) == 0 and (tmp_path / "runs" / "r-3" / "checkpoint.pt").is_file()
    (run / "notes.txt").write_text("mine")
    assert cli(["train", cfg, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and [r.get("epoch") for r in _lines(run)] == [1, 2, 2]
    # a folder holding the user's own config.yaml is never written into
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "config.yaml").write_text("my: settings\n")
    assert cli(["train", cfg, "--out", str(tmp_path / "own"), "--overwrite"]) == 2
    assert "not a kdkit run's" in _one_line(capsys.readouterr().err)
    assert (tmp_path / "own" / "config.yaml").read_text() == "my: settings\n"


def test_a_blow_up_before_the_first_checkpoint_does_not_claim_one_is_kept(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", _cfg(tmp_path, optim={"lr": 1e30, "momentum": 0.0},
                                           train={"epochs": 2, "progress": False, "log_every": 1,
                                                  "out_dir": str(tmp_path / "runs")}))
    assert cli(["train", cfg, "--out", str(tmp_path / "r")]) == 5
    msg = _one_line(capsys.readouterr().err)
    assert "no checkpoint had been written yet" in msg and "last good checkpoint" not in msg
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_bench_writes_under_runs_not_into_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["bench", "--student", "cnn_tiny", "--teacher", "cnn_tiny", "--dataset", "digits", "--steps", "1",
                "--warmup", "0", "--repeats", "1", "--batch-size", "8"]) == 0
    written = capsys.readouterr().out.strip().splitlines()[-1]
    assert written.startswith("written: runs/bench/bench-digits-cnn_tiny-cnn_tiny-kd-b8-cpu")
    assert not (tmp_path / "docs").exists()


def test_checkpoints_carry_what_inference_needs_and_threads_are_set(tmp_path):
    cfg = load_config(base=_cfg(tmp_path, data={"name": "digits", "mean": [0.0], "std": [1.0]}, train={
        "epochs": 1, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": "i", "threads": 1}))
    threads = torch.get_num_threads()
    try:
        kdkit.from_config(cfg, log=lambda m: None).fit()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    record = load_checkpoint(tmp_path / "runs" / "i" / "checkpoint.pt")["inference"]
    assert record == {"dataset": "digits", "input_shape": [1, 8, 8], "mean": [0.0], "std": [1.0],
                      "classes": [str(i) for i in range(10)]}
    with pytest.raises(ConfigError, match="mean and std are set together"):
        load_config(base=_cfg(tmp_path, data={"mean": [0.5]}))
    with pytest.raises(ConfigError, match="data.mean and data.std have 3 values; digits has 1"):
        kdkit.from_config(load_config(base=_cfg(tmp_path, data={"mean": [0.5] * 3, "std": [0.2] * 3})))


# ----------------------------------------------------------------------------- the README section


def test_the_readme_distil_your_own_model_section_runs_as_written(tmp_path):
    section = README[README.index("## Distil your own model"):README.index("## What is in the box")]
    files = re.findall(r"```(?:python|yaml) (\S+)\n(.*?)```", section, re.S)
    assert [f for f, _ in files] == ["mynets.py", "train_teacher.py", "distil.yaml"]
    for name, body in files:
        (tmp_path / name).write_text(body)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    outputs = []
    for line in re.findall(r"```bash own-model\n(.*?)```", section, re.S)[0].splitlines():
        command = line.split("#")[0].strip()
        p = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=HANG_S)
        assert p.returncode == 0, f"{command}: {p.stderr[-2000:]}"
        outputs.append(p.stdout + p.stderr)
        if " distill " in command:
            student = json.loads(p.stdout.strip().splitlines()[-1])
    teacher = float(re.search(r"teacher test top-1: ([\d.]+)%", outputs[0]).group(1))
    assert teacher > 95 and student["test/top1"] > 90 and student["test/agreement"] > 90
    assert "mynets:Student on digits test (359 images): top1" in outputs[2]
    assert (tmp_path / "student.onnx").stat().st_size > 0 and "top-1 agreement" in outputs[3]
