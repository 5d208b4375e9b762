"""Bad inputs at every place kdkit reads a file or takes a value, each refused with a clear error.

For each case: the exit code (2 config, 3 dataset, 4 checkpoint; 0 where kdkit may be lenient, or where a
teacher cache is rebuilt, which it says), exactly one ``kdkit: error:`` line naming the file and the
problem, no traceback, no code run from the file, and nothing already written changed. The CLI runs
in-process (an exception escaping it fails the test); one case runs in a subprocess under a time limit.
"""

import gzip
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import HANG_S

from kdkit import from_config
from kdkit.cli import main as cli
from kdkit.config import load_config

BASE = {"data": {"name": "digits", "limit_train": 256}, "train": {"epochs": 2, "progress": False, "seed": 0}}


class Evil:
    """A pickle payload: loading it would create ``marker`` (it must never run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class BadArgs:
    """An allowed numpy global called with arguments it cannot take."""

    def __reduce__(self):
        core = np._core if hasattr(np, "_core") else np.core
        return (core.multiarray._reconstruct, ("not", "an", "array"))


def snapshot(*dirs):
    out = {}
    for d in dirs:
        for p in sorted(Path(d).rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def check_refused(capsys, argv, code, names, marker=None):
    """Run the CLI; check the exit code and, for a refusal, one error line naming ``names``."""
    capsys.readouterr()
    got = cli([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("kdkit: error:")]
    assert got == code, err[-2000:]
    if code != 0:
        assert len(errors) == 1 and len(errors[0]) < 600, errors
        for name in names:
            assert str(name) in errors[0], errors[0]
    if marker is not None:
        assert not Path(marker).exists(), "code in the file ran"
    return err


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A cnn_tiny run stopped after epoch 1 of 2 (resumable), with its checkpoint, best.pt and metrics."""
    run = tmp_path_factory.mktemp("src") / "run"

    def stop(trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        from_config(load_config(base={**BASE, "model": "cnn_tiny"}), run_dir=run, log=lambda m: None,
                    callbacks=[stop]).fit()
    return run


def _edit(fn):
    def corrupt(path):
        ckpt = torch.load(path, weights_only=True)
        fn(ckpt)
        torch.save(ckpt, path)
    return corrupt


def _truncate(fraction):
    def corrupt(path):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)] if fraction < 1 else data[:-1])
    return corrupt


def _to_dir(path):
    path.unlink()
    path.mkdir()


def _legacy_evil(path):
    path.write_bytes(pickle.dumps({"format": "kdkit-checkpoint", "x": Evil(path.parent / "MARKER")}, protocol=2))


def _zip_evil(path):
    """A real zip-format torch file whose data.pkl is replaced by a pickle that would run code."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in members if n.endswith("data.pkl"))
    members[pkl] = pickle.dumps({"format": "kdkit-checkpoint", "model": Evil(path.parent / "MARKER")}, protocol=2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for n, data in members.items():
            z.writestr(n, data)


def _set(*keys, value):
    def fn(ckpt):
        node = ckpt
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return _edit(fn)


def _delete(key):
    return _edit(lambda c: c.pop(key))


def _first_weight(ckpt, entry="student"):
    return next(k for k, v in ckpt[entry].items() if v.is_floating_point() and v.dim() > 1)


def _weight(entry, change):
    def fn(ckpt):
        k = _first_weight(ckpt, entry)
        ckpt[entry][k] = change(ckpt[entry][k])
    return _edit(fn)


def _momentum_shape(ckpt):
    state = next(iter(ckpt["optimizer"]["state"].values()))
    state["momentum_buffer"] = torch.zeros(3)


def _other_model(ckpt):
    """The record says cnn_small; the weights are still cnn_tiny's."""
    ckpt["model"]["name"] = "cnn_small"


ALL = {"resume": 4, "eval": 4, "teacher": 4, "init": 4}
TRAINING = {"resume": 4, "eval": 0}  # training state: resume refuses, weights-only use may stay lenient
CHECKPOINT_CASES = {
    "truncated-10%": (_truncate(0.1), ALL),
    "truncated-50%": (_truncate(0.5), ALL),
    "truncated-90%": (_truncate(0.9), ALL),
    "truncated-last-byte": (_truncate(1.0), ALL),
    "zero-bytes": (lambda p: p.write_bytes(b""), ALL),
    "a-directory": (_to_dir, ALL),
    "wrong-magic": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8), ALL),
    "legacy-pickle-running-code": (_legacy_evil, ALL),
    "zip-pickle-running-code": (_zip_evil, ALL),
    "not-kdkit": (lambda p: torch.save({"weight": torch.zeros(2)}, p), ALL),
    "newer-version": (_set("version", value=99), ALL),
    "version-not-int": (_set("version", value="1"), ALL),
    "record-not-mapping": (_set("model", value="cnn_tiny"), ALL),
    "record-classes-string": (_set("model", "num_classes", value="ten"), ALL),
    "record-other-architecture": (_edit(_other_model), ALL),
    "weights-not-tensors": (_set("student", value=[1, 2, 3]), ALL),
    "weights-wrong-shape": (_weight("student", lambda t: t[:1]), ALL),
    "weights-wrong-dtype": (_weight("student", lambda t: t.double()), ALL),
    "weights-nan": (_weight("student", lambda t: t * float("nan")), ALL),
    "weights-missing-key": (_edit(lambda c: c["student"].pop(_first_weight(c))), ALL),
    "weights-extra-key": (_edit(lambda c: c["student"].update(extra=torch.zeros(1))), ALL),
    "stored-config-invalid": (_set("config", "train", "epochs", value="many"), ALL),
    "stored-config-huge-int": (_set("config", "train", "seed", value=2**80), ALL),
    "stored-config-missing": (_delete("config"), {"resume": 4, "eval": 4}),
    "no-training-state": (_delete("distiller"), TRAINING),
    "distiller-wrong-shape": (_weight("distiller", lambda t: t[:1]), TRAINING),
    "optimizer-missing": (_delete("optimizer"), TRAINING),
    "optimizer-momentum-shape": (_edit(_momentum_shape), TRAINING),
    "optimizer-groups": (_edit(lambda c: c["optimizer"]["param_groups"].append({"params": []})), TRAINING),
    "rng-missing": (_delete("rng"), TRAINING),
    "rng-not-bytes": (_set("rng", "torch", value=torch.zeros(5056)), TRAINING),
    "rng-wrong-length": (_set("rng", "torch", value=torch.zeros(7, dtype=torch.uint8)), TRAINING),
    "loader-state-not-mapping": (_set("loader", value=[1]), TRAINING),
    "loader-rng-malformed": (_set("loader", "generator", value=torch.zeros(3, dtype=torch.uint8)), TRAINING),
    "epoch-negative": (_set("epoch", value=-1), TRAINING),
    "epoch-past-the-end": (_set("epoch", value=10**6), TRAINING),
    "epoch-a-string": (_set("epoch", value="1"), TRAINING),
    "step-negative": (_set("step", value=-5), TRAINING),
    "best-nan": (_set("best", value=float("nan")), TRAINING),
}
CHECKPOINT_PARAMS = [(case, site) for case, (_, sites) in CHECKPOINT_CASES.items() for site in sites]


@pytest.mark.parametrize("case,site", CHECKPOINT_PARAMS, ids=[f"{s}-{c}" for c, s in CHECKPOINT_PARAMS])
def test_bad_checkpoint(case, site, source_run, tmp_path, capsys):
    corrupt, sites = CHECKPOINT_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    ckpt = run / "checkpoint.pt"
    corrupt(ckpt)
    before = snapshot(run)
    out = tmp_path / "new"
    if site == "resume":
        argv = ["train", "--resume", run]
    elif site == "eval":
        argv = ["eval", ckpt]
    else:
        spec = {"name": "cnn_tiny", "checkpoint": str(ckpt)}
        cfg = {**BASE, "train": {**BASE["train"], "epochs": 1},
               **({"model": "cnn_tiny", "teacher": spec, "method": "kd"} if site == "teacher" else {"model": spec})}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["distill" if site == "teacher" else "train", tmp_path / "cfg.yaml", "--out", out]
    check_refused(capsys, argv, sites[site], [ckpt], marker=run / "MARKER")
    assert snapshot(run) == before  # nothing already written changed
    if sites[site] != 0:
        assert not out.exists()


def test_resume_refuses_a_checkpoint_whose_record_differs_from_its_config(source_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    _edit(_other_model)(run / "checkpoint.pt")
    err = check_refused(capsys, ["train", "--resume", run], 4, [run / "checkpoint.pt"])
    assert "name='cnn_small'" in err and "'cnn_tiny'" in err


def test_interrupted_saves_are_tidied_at_resume(source_run, tmp_path, capsys):
    """Temporary files of interrupted checkpoint writes go at the next start of the run; complete
    checkpoints stay. A partial metrics line is dropped, a missing one restored from the checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    for name in (".checkpoint.pt.abc123.tmp", ".best.pt.x9.tmp"):
        (run / name).write_bytes(b"partial")
    (run / "checkpoint.pt.bak").write_bytes(b"keep")  # not ours: kept
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "stage": "ma')  # killed while writing epoch 1's line
    assert cli(["train", "--resume", str(run)]) == 0
    assert not list(run.glob(".*.tmp")) and (run / "checkpoint.pt.bak").read_bytes() == b"keep"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("epoch") for r in rows] == [1, 2, 2] and rows[-1]["final"]
    assert rows[0] == {**json.loads(lines[0])}


# ------------------------------------------------------------------------------------------- configs
def _laughs(levels=9):
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    prev = "a"
    for name in "bcdefghijk"[:levels - 1]:
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text + f"model: *{prev}\n"


CONFIG_CASES = {
    "billion-laughs": _laughs(),
    "deep-nesting": "model: " + "[" * 5000 + "]" * 5000 + "\n",
    "batch-size-10**30": yaml.safe_dump({**BASE, "model": "cnn_tiny", "data": {"batch_size": 10**30}}),
    "seed-2**80": yaml.safe_dump({**BASE, "model": "cnn_tiny", "train": {"seed": 2**80}}),
    "seed-negative": yaml.safe_dump({**BASE, "model": "cnn_tiny", "train": {"seed": -1}}),
    "lr-inf": "model: cnn_tiny\noptim: {lr: .inf}\n",
    "lr-nan": "model: cnn_tiny\noptim: {lr: .nan}\n",
    "lr-beyond-float": "model: cnn_tiny\noptim: {lr: " + "9" * 400 + "}\n",
    "epochs-10**12": yaml.safe_dump({**BASE, "model": "cnn_tiny", "train": {"epochs": 10**12}}),
    "image-size-huge": yaml.safe_dump({**BASE, "model": "cnn_tiny", "data": {"image_size": 10**6}}),
    "model-name-100k-chars": yaml.safe_dump({**BASE, "model": "x" * 100_000}),
    "unknown-key-100k-chars": yaml.safe_dump({**BASE, "model": "cnn_tiny", "y" * 100_000: 1}),
    "empty-file": "",
    "top-level-list": "- model\n- cnn_tiny\n",
    "not-yaml": "model: [cnn_tiny\n  : :\n",
    "binary": bytes(range(256)) * 4,
    "invalid-utf8": b"model: \xff\xfe\xfa\n",
    "larger-than-1MiB": "model: cnn_tiny\n" + "# padding\n" * 120_000,
    "wrong-type": "model: cnn_tiny\ntrain: {epochs: ten}\n",
    "method-weight-huge": "model: cnn_tiny\nmethod: {name: vanilla, weight: " + "1" * 30 + "}\n",
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_file(case, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    text = CONFIG_CASES[case]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    check_refused(capsys, ["train", path, "--out", tmp_path / "run"], 2, [path])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["data.batch_size=1000000000000000000000000000000", "train.seed=2e400",
                                      "optim.lr=.nan", "model=" + "m" * 5000, "train.epochs=[1, 2]"])
def test_bad_set_value(override, tmp_path, capsys):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "model": "cnn_tiny"}))
    check_refused(capsys, ["train", path, "--set", override, "--out", tmp_path / "run"], 2, [override.split("=")[0]])


def test_a_config_directory_and_a_bad_pipeline(tmp_path, capsys):
    check_refused(capsys, ["train", tmp_path], 2, [tmp_path])
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(_laughs())
    check_refused(capsys, ["pipeline", pipe], 2, [pipe])
    pipe.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": {**BASE, "model": "cnn_tiny",
                                                                      "train": {"seed": 2**70}}}]}))
    check_refused(capsys, ["pipeline", pipe, "--out", tmp_path / "p"], 2, ["train.seed"])


def test_billion_laughs_is_refused_quickly_in_a_fresh_process(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(10))
    p = subprocess.run([sys.executable, "-m", "kdkit", "train", str(path)], capture_output=True, text=True,
                       timeout=HANG_S)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "aliases expand" in p.stderr


# ------------------------------------------------------------------------------------------- CIFAR files
def _cifar_dir(root):
    from kdkit.data.cifar import write_batch

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(folder / name, rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), list(range(10)) * 2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return folder


def _batch(**changes):
    def corrupt(path):
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        for k, v in changes.items():
            if v is None:
                batch.pop(k.encode(), None)
            else:
                batch[k.encode()] = v
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return corrupt


CIFAR_CASES = {
    "labels-an-int": _batch(labels=5),
    "labels-strings": _batch(labels=["cat"] * 20),
    "labels-floats": _batch(labels=[0.5] * 20),
    "labels-huge-int": _batch(labels=[10**30] * 20),
    "labels-out-of-range": _batch(labels=[10] * 20),
    "labels-negative": _batch(labels=[-1] * 20),
    "labels-too-few": _batch(labels=[1] * 3),
    "labels-missing": _batch(labels=None),
    "data-strings": _batch(data=["x"] * 20),
    "data-wrong-shape": _batch(data=np.zeros((20, 100), dtype=np.uint8)),
    "data-float": _batch(data=np.zeros((20, 3072), dtype=np.float32)),
    "not-a-dict": lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=2)),
    "allowed-global-bad-args": lambda p: p.write_bytes(pickle.dumps({b"data": BadArgs()}, protocol=2)),
    "pickle-running-code": lambda p: p.write_bytes(pickle.dumps({b"data": Evil(p.parent / "MARKER")}, protocol=2)),
    "truncated-50%": _truncate(0.5),
    "truncated-last-byte": _truncate(1.0),
    "zero-bytes": lambda p: p.write_bytes(b""),
    "a-directory": _to_dir,
    "random-bytes": lambda p: p.write_bytes(bytes(range(256))),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_bad_cifar_batch(case, tmp_path, capsys):
    folder = _cifar_dir(tmp_path / "data")
    CIFAR_CASES[case](folder / "data_batch_1")
    before = snapshot(folder)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": "cnn_tiny", "data": {"name": "cifar10", "root": str(tmp_path / "data"),
                                                                 "verify": False, "download": False}}))
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "run"], 3, [folder / "data_batch_1"],
                  marker=folder / "MARKER")
    assert snapshot(folder) == before


def test_bad_cifar_class_names(tmp_path, capsys):
    folder = _cifar_dir(tmp_path / "data")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": 7}, protocol=2))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": "cnn_tiny", "data": {"name": "cifar10", "root": str(tmp_path / "data"),
                                                                 "verify": False, "download": False}}))
    check_refused(capsys, ["train", cfg], 3, [folder / "batches.meta"])


# ------------------------------------------------------------------------------------------- IDX files
def _idx_dir(root):
    from kdkit.data.idx import write_idx

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def _gzip_cut(path):
    path.with_suffix(".gz").write_bytes(gzip.compress(path.read_bytes())[:-20])
    path.unlink()
    return path.with_suffix(".gz")


IDX_CASES = {
    "truncated": _truncate(0.5),
    "zero-bytes": lambda p: p.write_bytes(b""),
    "wrong-magic": lambda p: p.write_bytes(b"\x01\x02" + p.read_bytes()[2:]),
    "label-out-of-range": lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\xc8"),
    "float-labels": lambda p: p.write_bytes(bytes([0, 0, 0x0D, 1]) + (30).to_bytes(4, "big") + bytes(120)),
    "gzip-cut": _gzip_cut,
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_bad_idx_file(case, tmp_path, capsys):
    folder = _idx_dir(tmp_path / "mnist")
    target = folder / "train-labels-idx1-ubyte"
    result = IDX_CASES[case](target)
    named = result if isinstance(result, Path) else target
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": "cnn_tiny", "data": {"name": "mnist", "root": str(folder),
                                                                 "verify": False, "download": False}}))
    before = snapshot(folder)
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "run"], 3,
                  [named])
    assert snapshot(folder) == before


def test_gzip_bomb_is_not_inflated(tmp_path, monkeypatch):
    from kdkit.data import idx
    from kdkit.errors import DatasetError

    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(bytes(10_000)))
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 1000)
    with pytest.raises(DatasetError, match="decompresses to more than 1,000 bytes"):
        idx.read_idx_file(path)


# ------------------------------------------------------------------------------------------- teacher cache
@pytest.fixture(scope="module")
def cached(tmp_path_factory, teacher_ckpt):
    """A disk teacher cache made by one KD run (augmentation off), and that run's config."""
    root = tmp_path_factory.mktemp("cache")
    cfg = {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": "kd",
           "data": {"name": "digits", "limit_train": 128, "augment": False},
           "train": {"epochs": 1, "progress": False, "teacher_cache": {"store": "disk", "path": str(root / "c")}}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["distill", str(root / "cfg.yaml"), "--out", str(root / "first")]) == 0
    return root


def _meta(fn):
    def corrupt(cache):
        meta = json.loads((cache / "meta.json").read_text())
        fn(meta)
        (cache / "meta.json").write_text(json.dumps(meta))
    return corrupt


def _npy(fn):
    def corrupt(cache):
        fn(cache / "logits0.npy")
    return corrupt


def _replace_values(path):
    a = np.load(path)
    np.save(path, a[::-1].copy())  # same shape and dtype, other values


def _evil_npy(path):
    np.save(path, np.array([Evil(path.parent / "MARKER")] * 3, dtype=object), allow_pickle=True)


def _link_outside(path):
    path.unlink()
    path.symlink_to(path.parents[2] / "outside.npy")  # <tmp>/c/<fingerprint>/logits0.npy -> <tmp>/outside.npy


CACHE_CASES = {
    "meta-not-json": lambda c: (c / "meta.json").write_text("{not json"),
    "meta-a-list": lambda c: (c / "meta.json").write_text("[1, 2]"),
    "meta-a-directory": lambda c: ((c / "meta.json").unlink(), (c / "meta.json").mkdir()),
    "entry-path-traversal": _meta(lambda m: m["entries"].append("../outside")),
    "entry-absolute-path": _meta(lambda m: m["entries"].append("/etc/passwd")),
    "npy-object-dtype-pickle": _npy(_evil_npy),
    "npy-truncated": _npy(_truncate(0.5)),
    "npy-wrong-shape": _npy(lambda p: np.save(p, np.zeros((3, 10), dtype=np.float32))),
    "npy-wrong-dtype": _npy(lambda p: np.save(p, np.load(p).astype(np.float64))),
    "npy-values-replaced": _npy(_replace_values),
    "npy-missing": _npy(lambda p: p.unlink()),
    "npy-link-outside": _npy(_link_outside),
    "checksums-missing": _meta(lambda m: m.pop("checksums")),
}


@pytest.mark.parametrize("case", list(CACHE_CASES))
def test_bad_teacher_cache_is_rebuilt_saying_why(case, cached, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(cached / "c", cache)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones(4))
    outside_bytes = outside.read_bytes()
    (folder,) = [d for d in cache.iterdir() if d.is_dir() and d.name != "eval"]  # its fingerprint folder
    CACHE_CASES[case](folder)
    cfg = yaml.safe_load((cached / "cfg.yaml").read_text())
    cfg["train"]["teacher_cache"]["path"] = str(cache)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    first = snapshot(cached / "first")
    err = check_refused(capsys, ["distill", tmp_path / "cfg.yaml", "--out", tmp_path / "run"], 0, [],
                        marker=folder / "MARKER")
    assert "not reused:" in err and "rebuilding it" in err
    assert outside.read_bytes() == outside_bytes and snapshot(cached / "first") == first
    capsys.readouterr()  # the rebuilt cache is valid: a third run reuses it
    assert cli(["distill", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert "reused" in capsys.readouterr().err
    # and the student learned from the same teacher outputs as with the original cache
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True)["student"] for p in (cached / "first", tmp_path / "run"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_good_cache_is_reused(cached, capsys):
    capsys.readouterr()
    assert cli(["distill", str(cached / "cfg.yaml"), "--out", str(cached / "second")]) == 0
    err = capsys.readouterr().err
    assert "reused" in err and "not reused" not in err


def test_the_cache_never_unpickles(tmp_path):
    """The loader of cache arrays refuses object arrays outright (allow_pickle=False)."""
    path = tmp_path / "a.npy"
    _evil_npy(path)
    with pytest.raises(ValueError):
        np.load(path, mmap_mode="r", allow_pickle=False)
    assert not (tmp_path / "MARKER").exists()


# ------------------------------------------------------------------------------------------- image folders
def _folder(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root / "train" / "a" / "0.png"


def _huge_png(path):
    """A valid PNG header claiming 100000 x 100000 pixels (a decompression bomb)."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    path.write_bytes(bytes(data))


FOLDER_CASES = {
    "truncated": _truncate(0.5),
    "zero-bytes": lambda p: p.write_bytes(b""),
    "random-bytes": lambda p: p.write_bytes(bytes(range(256))),
    "a-directory": _to_dir,
    "decompression-bomb": _huge_png,
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_bad_image_in_a_folder_dataset(case, tmp_path, capsys):
    target = _folder(tmp_path / "imgs")
    FOLDER_CASES[case](target)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": "cnn_tiny", "data": {"name": "folder", "root": str(tmp_path / "imgs"),
                                                                 "image_size": 8}}))
    before = snapshot(tmp_path / "imgs")
    check_refused(capsys, ["train", cfg, "--out", tmp_path / "run"], 3, [target])
    assert snapshot(tmp_path / "imgs") == before


@pytest.mark.parametrize("argv", [["inspect", "cnn_tiny", "--input-shape", "3,100000,100000"],
                                  ["inspect", "cnn_tiny", "--input-shape", "3,x,2"],
                                  ["inspect", "cnn_tiny", "--num-classes", str(10**30)],
                                  ["inspect", "no_such_model"]])
def test_bad_command_line_values(argv, capsys):
    check_refused(capsys, argv, 2, [argv[-1][:20]])


def test_best_pt_is_restored_when_a_kill_fell_between_the_two_writes(source_run, tmp_path):
    from kdkit import resume

    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    (run / "best.pt").unlink()  # epoch 1 was the best: its checkpoint.pt landed, its best.pt did not
    logs = []
    trainer = resume(run, log=logs.append)
    assert trainer.best_epoch == 1
    trainer._prepare_run_dir()
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert (run / "best.pt").read_bytes() == (run / "checkpoint.pt").read_bytes()
    assert any("best.pt restored" in m for m in logs)
