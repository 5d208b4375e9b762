"""Distributed data-parallel training with the gloo backend and two CPU processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import HANG_S

from kdkit.config import load_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Crash(Exception):
    pass


def _worker(rank: int, world: int, port: int, cfg_dict: dict, run_dir: str, out: str, mode: str) -> None:
    """One rank: train (``full``), train and crash after the first epoch (``crash``), or resume (``resume``);
    then save this rank's weights to ``out/rank<r>.pt``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from kdkit import distributed, from_config, resume

    def crash(trainer, epoch, metrics):
        if mode == "crash" and epoch == 1:
            raise _Crash

    try:
        if mode == "resume":
            trainer = resume(run_dir, log=lambda m: None)
        else:
            trainer = from_config(load_config(base=cfg_dict), run_dir=run_dir, log=lambda m: None, callbacks=[crash])
        try:
            trainer.fit()
        except _Crash:
            distributed.cleanup(wait=True)  # both ranks stop at the same point
            return
        torch.save(trainer.distiller.state_dict(), Path(out) / f"rank{rank}.pt")
        distributed.cleanup(wait=True)
    finally:
        distributed.cleanup()


def _spawn(cfg: dict, run_dir: Path, out: Path, mode: str) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(2, _free_port(), cfg, str(run_dir), str(out), mode), nprocs=2,
                       start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)] if mode != "crash" else []


def _cfg(tmp_path, teacher_ckpt) -> dict:
    return {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
            "method": [{"name": "kd"}, {"name": "at", "student_layers": ["stage1"], "teacher_layers": ["stage1"]}],
            "data": {"name": "digits", "batch_size": 64},
            "train": {"epochs": 2, "progress": False, "out_dir": str(tmp_path)}}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ranks_identical_and_resume_continues_exactly(tmp_path, teacher_ckpt):
    cfg = _cfg(tmp_path, teacher_ckpt)
    full = _spawn(cfg, tmp_path / "full", tmp_path / "w_full", "full")
    _assert_same(full[0], full[1])  # both ranks end with identical weights (checked here, not by kdkit)
    metrics = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in metrics if "train/loss" in m]
    assert epochs[1]["train/loss"] < epochs[0]["train/loss"]  # the loss goes down
    assert all(m["ddp/replicas_identical"] and m["ddp/world_size"] == 2 for m in epochs)
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    _assert_same(ckpt["distiller"], full[0])  # rank 0 wrote the checkpoint

    _spawn(cfg, tmp_path / "crashed", tmp_path / "w_crash", "crash")  # stops after epoch 1
    assert torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = _spawn(cfg, tmp_path / "crashed", tmp_path / "w_resume", "resume")
    _assert_same(resumed[0], resumed[1])
    _assert_same(resumed[0], full[0])  # the resumed run continues exactly where the full one went


def test_torchrun_cli(tmp_path, teacher_ckpt):
    cfg = _cfg(tmp_path, teacher_ckpt)
    cfg["train"]["epochs"] = 1
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "kdkit", "distill", str(path),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1  # only rank 0 reports
    assert json.loads(results[0])["ddp/replicas_identical"] is True
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_global_batch_must_split_evenly(tmp_path, teacher_ckpt):
    from kdkit.data import build_loaders
    from kdkit.errors import ConfigError

    cfg = load_config(base={**_cfg(tmp_path, teacher_ckpt), "data": {"name": "digits", "batch_size": 63}})
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        build_loaders(cfg.data, 0, rank=0, world_size=2)


def test_ranks_share_the_global_batch_and_augmentation():
    """Two ranks see disjoint halves of the batch a single process would see, augmented identically."""
    from kdkit.data import build_loaders

    cfg = load_config(base={"model": "cnn_tiny", "data": {"name": "fashion_mnist", "batch_size": 8}})
    from kdkit.data.base import Dataset, ImageSet

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8, generator=g)
    ds = Dataset("toy", ImageSet(torch.arange(40) % 3, images=imgs), ImageSet(torch.arange(8) % 3, images=imgs[:8]),
                 3, 1, (12, 12), (0.5,), (0.25,), crop_padding=2, flip=True)
    cfg.data.cutout = 4
    one = build_loaders(cfg.data, 0, dataset=ds).train
    ranks = [build_loaders(cfg.data, 0, dataset=ds, rank=r, world_size=2).train for r in range(2)]
    for (x, y, i), (x0, y0, i0), (x1, y1, i1) in zip(one, *ranks):
        torch.testing.assert_close(torch.cat([x0, x1]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([i0, i1]), i) and torch.equal(torch.cat([y0, y1]), y)
    tests = [build_loaders(cfg.data, 0, dataset=ds, rank=r, world_size=2).test for r in range(2)]
    seen = sorted(int(v) for t in tests for _, _, idx in t for v in idx)
    assert seen == list(range(8))  # evaluation shards are disjoint and cover the set


def _ghost_cfg(teacher_ckpt, tmp_path, method) -> dict:
    """Digits, 1 epoch, global batch 64 with ghost batch norm groups of 8 (inside each rank's 32)."""
    return {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": method,
            "data": {"name": "digits", "batch_size": 64},
            "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "ghost_batch_size": 8}}


def _ddp_and_single(cfg: dict, tmp_path: Path, name: str):
    """Rank 0's final state after 2-rank DDP (checked identical to rank 1's), and a single-process trainer
    run on the same config."""
    from kdkit import from_config

    ranks = _spawn(cfg, tmp_path / name, tmp_path / f"w_{name}", "full")
    _assert_same(ranks[0], ranks[1])
    single = from_config(load_config(base=cfg), run_dir=tmp_path / f"{name}_single", log=lambda m: None)
    single.fit()
    return ranks[0], single


def test_ddp_with_input_gradients_and_ghost_batch_norm(tmp_path, teacher_ckpt):
    """at_grad (double backward through the student) and ghost batch norm under DDP: the ranks stay identical,
    and with ghost groups inside each rank's share the parameters follow a single process on the whole batch
    (same groups, gradients averaged over the ranks = the whole batch's gradient)."""
    cfg = _ghost_cfg(teacher_ckpt, tmp_path, [{"name": "kd"}, {"name": "at_grad"},
                                              {"name": "fitnets", "student_layer": "stage2.1",
                                               "teacher_layer": "stage2.1"}])
    rank0, single = _ddp_and_single(cfg, tmp_path, "ddp")
    params = dict(single.distiller.named_parameters())
    assert any(k.startswith("methods.") for k in params)  # the fitnets regressor is compared too
    for name, p in params.items():  # buffers differ: DDP keeps rank 0's running statistics
        torch.testing.assert_close(rank0[name], p.detach(), rtol=1e-3, atol=1e-4, msg=name)


def test_crd_memory_is_gathered_across_ranks(tmp_path, teacher_ckpt):
    """CRD's negative queue under DDP: every rank enqueues the whole global batch, so the ranks' memories
    stay identical and equal to one process on the whole batch (ghost batch norm keeps the statistics
    groups inside each rank's share). The dataset-sized bank: every training image's row is written,
    not only rank 0's half."""
    from kdkit import from_config

    cfg = _ghost_cfg(teacher_ckpt, tmp_path, {"name": "crd", "feat_dim": 16, "negatives": 200})
    rank0, single = _ddp_and_single(cfg, tmp_path, "queue")
    state = single.distiller.state_dict()
    assert int(state["methods.0.ptr"]) == int(rank0["methods.0.ptr"])
    for name in ("methods.0.mem_s", "methods.0.mem_t", "methods.0.embed_s.fc.weight"):
        torch.testing.assert_close(rank0[name], state[name], rtol=1e-3, atol=1e-4, msg=name)

    cfg["method"] = {"name": "crd", "feat_dim": 16, "negatives": 100, "memory": "bank"}
    ranks = _spawn(cfg, tmp_path / "bank", tmp_path / "w_bank", "full")
    _assert_same(ranks[0], ranks[1])
    fresh = from_config(load_config(base=cfg), run_dir=tmp_path / "b0", log=lambda m: None)  # built, not trained
    fresh = fresh.distiller.state_dict()["methods.0.mem_s"]
    written = (ranks[0]["methods.0.mem_s"] != fresh).any(1).sum().item()
    seen = len(single.built.loaders.train) * 64  # full global batches of one epoch (the last partial one dropped)
    assert written == seen, (written, seen)


def test_torchrun_peers_and_a_frozen_stage(tmp_path):
    """Two ranks train the student and a peer (the worked mutual-learning example) in two stages that
    freeze the student's first block (DDP with parameters that get no gradient): the block ends exactly as
    initialised, weights and batch-norm statistics."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    cfg = {"model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "toy_mutual",
           "stages": [{"name": "warm", "epochs": 1, "frozen": ["student.stage1"]},
                      {"name": "main", "frozen": ["student.stage1"], "lr": 0.02}],
           "data": {"name": "digits", "batch_size": 64, "limit_train": 512},
           "train": {"epochs": 1, "progress": False}}
    path = tmp_path / "mutual.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", "-m", "kdkit", "--plugin", str(examples / "toy_mutual.py"),
                           "train", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics if "stage" in m] == ["warm", "main"]
    assert all(m["ddp/replicas_identical"] for m in metrics if "stage" in m)
    assert "val/peer1/top1" in metrics[0] and "test/peer1/top1" in metrics[-1]
    from kdkit import from_config
    from kdkit.cli import load_plugin

    load_plugin(str(examples / "toy_mutual.py"))
    initial = from_config(load_config(base=cfg), log=lambda m: None, write_files=False).distiller.student
    final = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["student"]
    block = {k: v for k, v in initial.state_dict().items() if k.startswith("stage1.")}
    assert block and all(torch.equal(v, final[k]) for k, v in block.items())
    assert not torch.equal(initial.state_dict()["fc.weight"], final["fc.weight"])  # the rest trained
