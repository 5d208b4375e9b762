"""The fast path's pieces: teacher cache, replayed augmentation, cutout, the reference pipeline,
compile, and `kdkit bench`."""

import json
from contextlib import nullcontext

import pytest
import torch

from kdkit import from_config
from kdkit.data.loader import cutout
from kdkit.errors import ConfigError

QUIET = {"log": lambda m: None}


def _kd_cfg(digits_cfg, tmp_path, teacher_ckpt, data=None, train=None, name="run"):
    return digits_cfg(tmp_path, model="cnn_tiny", teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                      method=[{"name": "kd"}, {"name": "at", "student_layers": ["stage1"],
                                                "teacher_layers": ["stage1"]}],
                      data={"name": "digits", **(data or {})},
                      train={"epochs": 3, "progress": False, "out_dir": str(tmp_path), "run_name": name,
                             **(train or {})})


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.distiller.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _augmented_digits(cfg):
    """digits with crop and flip augmentation switched on (the real set has none)."""
    from kdkit.build import build
    from kdkit.data import load_dataset

    ds = load_dataset(cfg.data)
    ds.crop_padding, ds.flip = 1, True
    return build(cfg, dataset=ds)


@pytest.mark.parametrize("data", [{"augment": False}, {"replay_views": 2},
                                  {"augment": False, "pipeline": "dataloader"}])
def test_teacher_cache_is_exact(tmp_path, digits_cfg, teacher_ckpt, data):
    """With augmentation off or replayed, a run served from the cache ends with the same weights (either
    pipeline: both implement the TrainLoader protocol the cache uses)."""
    cfg = _kd_cfg(digits_cfg, tmp_path, teacher_ckpt, data, name="plain")
    plain = from_config(cfg, built=_augmented_digits(cfg), **QUIET)
    plain.fit()
    cfg = _kd_cfg(digits_cfg, tmp_path, teacher_ckpt, data, {"teacher_cache": {}}, "cached")
    cached = from_config(cfg, built=_augmented_digits(cfg), **QUIET)
    calls = []
    cached.distiller.teachers[0].register_forward_hook(lambda *a: calls.append(1))
    cached.fit()
    assert _same(_weights(plain), _weights(cached))
    n_train = len(cached.loaders.train.data)
    views = data.get("replay_views", 1)
    assert cached.cache.num_keys == views * n_train
    # the teacher ran only to fill the cache (one pass per view) and to evaluate, never in a training step;
    # its outputs on the validation split were kept after the first epoch (TeacherOutputs)
    fill = views * -(-n_train // cached.loaders.train.batch_size)
    evals = len(cached.loaders.val) + len(cached.loaders.test)
    assert len(calls) == fill + evals


def test_kept_teacher_outputs_give_the_same_evaluation(tmp_path, digits_cfg, teacher_ckpt):
    """The teachers' outputs on the evaluation splits are computed once per run and looked up at every later
    epoch: the agreement (and every other metric) equals a run that computes them each time, at batch 128 and
    at a batch that leaves a short last batch; a batch under other sample indices is computed, not looked up."""
    from kdkit.engine.evaluate import TeacherOutputs, evaluate

    for batch in (128, 50):
        runs = {}
        for keep in (True, False):
            cfg = _kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"batch_size": batch}, name=f"b{batch}-{keep}")
            trainer = from_config(cfg, **QUIET)
            trainer.teacher_eval.keep = keep
            calls = []
            trainer.distiller.teachers[0].register_forward_hook(lambda *a, calls=calls: calls.append(1))
            trainer.fit()
            runs[keep] = (trainer, [{k: v for k, v in r.items() if not k.startswith("time/")}
                                    for r in trainer.history], len(calls))
        (kept, hist_kept, n_kept), (_, hist_live, n_live) = runs[True], runs[False]
        assert hist_kept == hist_live and all("val/agreement" in r for r in hist_kept)
        n_val = len(kept.loaders.val)
        assert n_live - n_kept == 2 * n_val  # epochs 2 and 3 looked the validation batches up
        assert kept.teacher_eval.nbytes == (len(kept.loaders.val.data) + len(kept.loaders.test.data)) * 10 * 4
    # looked up only under the same loader and the same index list; past the limit, nothing is kept
    teacher = kept.distiller.teachers[0]
    direct = []
    teacher.register_forward_hook(lambda *a: direct.append(1))
    x = torch.randn(4, 1, 8, 8)
    outputs = TeacherOutputs([teacher])
    first = outputs("val", x, torch.arange(4), nullcontext)
    assert outputs("val", x, torch.arange(4), nullcontext) is first and len(direct) == 1
    outputs("val", x, torch.arange(1, 5), nullcontext)
    outputs("test", x, torch.arange(4), nullcontext)
    outputs("val", x, None, nullcontext)
    assert len(direct) == 4 and outputs.nbytes == 3 * first.nbytes  # the index-less call kept nothing
    small = TeacherOutputs([teacher], limit_bytes=first.nbytes - 1)
    small("val", x, torch.arange(4), nullcontext)
    small("val", x, torch.arange(4), nullcontext)
    assert len(direct) == 6 and small.nbytes == 0
    assert evaluate(kept.distiller.student, kept.loaders.val, outputs) == \
        evaluate(kept.distiller.student, kept.loaders.val, [teacher])


def test_teacher_cache_refuses_fresh_augmentation(tmp_path, digits_cfg, teacher_ckpt):
    cfg = _kd_cfg(digits_cfg, tmp_path, teacher_ckpt, train={"teacher_cache": {}})
    with pytest.raises(ConfigError, match="exact only when every training input repeats"):
        from_config(cfg, built=_augmented_digits(cfg), **QUIET).fit()


def test_disk_cache_is_reused_and_checked(tmp_path, digits_cfg, teacher_ckpt):
    path = tmp_path / "tcache"
    opts = {"teacher_cache": {"store": "disk", "path": str(path)}}
    a = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"augment": False}, opts, "a"), **QUIET)
    a.fit()
    (folder,) = [d for d in path.iterdir() if (d / "meta.json").is_file()]  # one folder per fingerprint
    meta = json.loads((folder / "meta.json").read_text())
    assert folder.name == meta["fingerprint"][:16]
    assert meta["complete"] and meta["num_keys"] == len(a.loaders.train.data)
    b = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"augment": False}, opts, "b"), **QUIET)
    logs = []
    b.log = logs.append
    b.fit()
    assert any("reused" in line for line in logs) and _same(_weights(a), _weights(b))
    # another seed splits the data differently: the fingerprint differs and the cache is rebuilt
    c = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"augment": False}, {**opts, "seed": 1}, "c"), **QUIET)
    logs.clear()
    c.log = logs.append
    c.fit()
    assert any("filled" in line for line in logs)
    folders = sorted(d.name for d in path.iterdir() if (d / "meta.json").is_file())
    assert len(folders) == 2 and json.loads((folder / "meta.json").read_text()) == meta  # a's cache untouched


def test_disk_store_shares_the_teachers_evaluation_outputs(tmp_path, digits_cfg, teacher_ckpt):
    """With ``store: disk`` a run also writes the teachers' outputs on the validation and test splits beside
    the cache; a later run with the same teacher and splits runs the teacher not once (training lookups and
    evaluation both read the files), and every metric and weight equals a run that computes everything."""
    opts = {"teacher_cache": {"store": "disk", "path": str(tmp_path / "shared")}}
    runs = {}
    for name, train in (("memory", {"teacher_cache": {}}), ("first", opts), ("second", opts)):
        trainer = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"augment": False}, train, name), **QUIET)
        calls = []
        trainer.distiller.teachers[0].register_forward_hook(lambda *a, calls=calls: calls.append(1))
        result = trainer.fit()
        runs[name] = (trainer, [{k: v for k, v in r.items() if not k.startswith("time/")}
                                for r in trainer.history], {k: v for k, v in result.items()
                                                            if not k.startswith("time/")}, len(calls))
    (mem, h_mem, r_mem, n_mem), (first, h_first, r_first, n_first), (second, h_second, r_second, n_second) = \
        runs["memory"], runs["first"], runs["second"]
    assert n_mem == n_first > 0 and n_second == 0  # the second run never ran the teacher
    assert h_mem == h_first == h_second and r_mem == r_first == r_second and "test/agreement" in r_second
    assert _same(_weights(mem), _weights(first)) and _same(_weights(first), _weights(second))
    stored = sorted((tmp_path / "shared" / "eval").iterdir())
    assert len(stored) == 2  # one folder per evaluation split
    # an altered file is not read: the next run computes those outputs again (and rewrites them)
    rows = stored[0] / "outputs.npy"
    data = bytearray(rows.read_bytes())
    data[-1] ^= 1
    rows.write_bytes(bytes(data))
    third = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, {"augment": False}, opts, "third"), **QUIET)
    calls = []
    third.distiller.teachers[0].register_forward_hook(lambda *a: calls.append(1))
    result = third.fit()
    assert 0 < len(calls) and {k: v for k, v in result.items() if not k.startswith("time/")} == r_mem
    assert rows.read_bytes() != bytes(data)


def test_topk_cache_keeps_top_logits_and_tail_mass(tmp_path):
    from kdkit.config import TeacherCacheConfig
    from kdkit.engine.cache import TeacherCache

    cache = TeacherCache(TeacherCacheConfig(topk=3), 4, torch.device("cpu"), "x")
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * 3
    keys = torch.arange(4)
    for suffix, v in cache.task.compress_output(logits, 3).items():
        cache._put(f"logits0{suffix}", keys, v)
    cache.n_teachers = 1
    (back,), _ = cache.lookup(keys, 10)
    top = logits.topk(3, dim=1)
    assert torch.equal(back.gather(1, top.indices), top.values)  # the top-k logits are kept exactly
    p, q = logits.softmax(1), back.softmax(1)
    torch.testing.assert_close(q.gather(1, top.indices), p.gather(1, top.indices))  # and their probabilities
    assert not torch.allclose(p, q)  # the tail is flattened: approximate


def test_replayed_augmentation_repeats_every_n_epochs():
    from kdkit.data import BatchLoader
    from kdkit.data.base import ImageSet

    imgs = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ImageSet(torch.arange(12), images=imgs)
    loader = BatchLoader(data, 4, mean=(0.5,), std=(0.2,), shuffle=True, crop_padding=2, flip=True, cutout=3,
                         replay_views=2)

    def epoch():
        out = {}
        for x, _, idx in loader:
            for i, k in enumerate(loader.view_keys(idx).tolist()):
                out[k] = x[i]
        return out

    e1, e2, e3 = epoch(), epoch(), epoch()
    assert set(e1) == set(range(12)) and set(e2) == set(range(12, 24))  # keys: view * N + index
    assert all(torch.equal(e1[k], e3[k]) for k in e1)  # view 0 again, image for image
    assert any(not torch.equal(e1[k - 12], e2[k]) for k in e2)  # the two views differ
    enumerated = {int(k): x for xs, ks in loader.iter_views() for x, k in zip(xs, ks)}
    assert all(torch.equal(enumerated[k], v) for k, v in {**e1, **e2}.items())


def test_cutout_zeroes_a_clipped_square():
    x = torch.ones(2, 3, 6, 6)
    out = cutout(x, 4, torch.tensor([[2, 0], [3, 5]]))  # centres (2,3) and (0,5)
    assert (out[0, :, 0:4, 1:5] == 0).all() and out[0].sum() == 3 * (36 - 16)
    assert (out[1, :, 0:2, 3:6] == 0).all() and out[1].sum() == 3 * (36 - 6)  # clipped at the corner


def test_dataloader_pipeline_trains_and_resumes_by_epoch(tmp_path, digits_cfg):
    cfg = digits_cfg(tmp_path, data={"name": "digits", "pipeline": "dataloader", "cutout": 2},
                     train={"epochs": 2, "progress": False, "out_dir": str(tmp_path), "run_name": "dl"})
    t = from_config(cfg, **QUIET)
    res = t.fit()
    assert res["test/top1"] > 30 and t.loaders.train.state_dict() == {"epoch": 2}


def test_compiled_step_matches_eager(tmp_path, digits_cfg, teacher_ckpt):
    """torch.compile of the step (eager backend here: inductor needs minutes on this CPU; the benchmark
    covers it) traces the distiller with its feature hooks and gives the same weights."""
    eager = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, train={"epochs": 1}, name="e"), **QUIET)
    eager.fit()
    comp = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, name="c",
                           train={"epochs": 1, "compile": "default", "compile_backend": "eager",
                                  "compile_teacher": True}), **QUIET)
    comp.fit()
    assert _same(_weights(eager), _weights(comp))


def test_bench_cli_writes_json(tmp_path, capsys):
    from kdkit.cli import main

    out = tmp_path / "b.json"
    code = main(["bench", "--teacher", "cnn_small", "--student", "cnn_tiny", "--dataset", "digits", "--steps", "2",
                 "--warmup", "1", "--repeats", "1", "--reference", "--minimal", "--workers", "1", "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"kdkit", "reference", "minimal"} and r["flops_per_step"] > 0
    assert r["results"]["kdkit"]["images_per_s"] > 0 and r["speedup_vs_reference"] > 0
    assert "kdkit vs reference" in capsys.readouterr().out
    assert main(["bench", "--student", "cnn_tiny", "--method", "at", "--teacher", "cnn_small", "--minimal",
                 "--dataset", "digits", "--no-write", "--steps", "1"]) == 2  # minimal loop is KD only


@pytest.mark.slow
def test_inductor_compiled_step_trains_like_eager(tmp_path, digits_cfg, teacher_ckpt):
    """The real compiler (inductor, C++ on CPU): same loss trajectory as eager up to fused-kernel rounding."""
    eager = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, train={"epochs": 2}, name="e"), **QUIET)
    a = eager.fit()
    comp = from_config(_kd_cfg(digits_cfg, tmp_path, teacher_ckpt, name="c",
                           train={"epochs": 2, "compile": "default", "compile_teacher": True}), **QUIET)
    b = comp.fit()
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=0.05)
    assert abs(b["test/top1"] - a["test/top1"]) < 3.0


def test_both_training_pipelines_implement_the_loader_protocol(digits_cfg, tmp_path):
    from kdkit.data import TrainLoader, build_loaders
    from kdkit.data.reference import DataLoaderPipeline

    for pipeline in ("memory", "dataloader"):
        cfg = digits_cfg(tmp_path, data={"name": "digits", "pipeline": pipeline})
        train = build_loaders(cfg.data, 0).train
        assert isinstance(train, TrainLoader), pipeline
        assert isinstance(train, DataLoaderPipeline) == (pipeline == "dataloader")
        assert train.num_views == 1  # digits has no augmentation of its own: every input repeats
        x, keys = next(iter(train.iter_views()))
        assert len(x) == len(keys) == train.batch_size and train.fingerprint()["views"] == "1"


def test_remove_feature_caches_keeps_logits_and_caches_in_use(tmp_path):
    """Only complete caches with tapped features that no run holds are deleted; logits-only caches, the
    evaluation outputs and a cache a run is reading stay."""
    from kdkit.engine.cache import remove_feature_caches
    from kdkit.engine.run_files import FileLock

    def folder(name, features):
        d = tmp_path / name
        d.mkdir()
        (d / "meta.json").write_text(json.dumps({"complete": True, "features": features}))
        (d / "feat0.npy").write_bytes(b"x")
        return d

    feats, logits, busy = folder("a", [["teacher", "stage1"]]), folder("b", []), folder("c", [["teacher", "stage2"]])
    (tmp_path / "eval" / "0123").mkdir(parents=True)
    (tmp_path / "eval" / "0123" / "meta.json").write_text("{}")
    reader = FileLock(busy / ".lock")
    assert reader.acquire(False)  # a run reading cache c
    try:
        assert remove_feature_caches(tmp_path) == [feats]
    finally:
        reader.release()
    assert not feats.exists() and logits.is_dir() and busy.is_dir() and (tmp_path / "eval" / "0123").is_dir()
    assert remove_feature_caches(tmp_path) == [busy] and remove_feature_caches(tmp_path / "missing") == []



def test_channels_last_on_the_cpu_trains_distils_and_resumes(tmp_path, teacher_ckpt):
    """``train.channels_last: true`` on the CPU (off by default there; benchmarks/cpu_channels_last.py measures
    what it gives): the networks and the batches are NHWC, KD + AT train, and a stopped run resumes bit for bit."""
    from conftest import killed_and_resumed

    from kdkit.config import load_config

    cfg = {"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
           "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
           "method": [{"name": "kd"}, {"name": "at", "student_layers": ["stage1"], "teacher_layers": ["stage1"]}],
           "train": {"epochs": 2, "progress": False, "channels_last": True}}
    trainer = from_config(load_config(base=cfg), run_dir=tmp_path / "probe", **QUIET)
    convs = [m.weight for m in trainer.distiller.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (one input channel: the two formats are the same memory)
    x, _, _ = next(iter(trainer.loaders.train))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert killed_and_resumed(cfg, tmp_path / "runs")["test/top1"] > 50
