"""benchmarks/gan_table.py's table from finished runs (their metrics files written as kdkit writes them; the
training itself is tested in test_gan.py): the rows, the paired FID difference, and the cost line, whose CPU
time counts only the runs whose every epoch recorded it."""

import json
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gan_table(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gan_table

    return gan_table


def run(folder: Path, fid: float, epochs: list[dict]) -> None:
    folder.mkdir(parents=True)
    final = {"final": True, "test/fid_fmnist": fid, "test/kid_fmnist": 1.0, "test/psnr": 20.0, "test/ssim": 0.5}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*epochs, final]))


def test_the_gan_table_from_finished_runs(gan_table, tmp_path):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    timed = [{"epoch": 1, "time/train_s": 1800.0, "time/train_cpu_s": 900.0}]
    untimed = [{"epoch": 1, "time/train_s": 3600.0}]  # trained before kdkit recorded CPU time
    run(out / "teacher", 30.0, timed)
    for seed, (plain, distilled) in enumerate([(50.0, 40.0), (52.0, 46.0)]):
        run(out / f"ngf16-gan-s{seed}", plain, timed)
        run(out / f"ngf16-gan_compression-s{seed}", distilled, untimed if seed else timed)
    args = Namespace(out=str(out), teacher_epochs=8, epochs=5, limit_train=8000, seeds="0,1", threads=1,
                     device="cpu", docs=str(docs), write_only=True)
    teacher_rows = gan_table.run_rows(out / "teacher")
    runs, pending = gan_table.collect_runs(out, [0, 1])
    assert pending == [f"ngf8-{m}-s{s}" for m in gan_table.METHODS for s in (0, 1)]
    gan_table.write(args, out, [{"final": True, "test/top1": 90.0}], teacher_rows, runs, pending, [0, 1])
    md = (docs / "fashion_gan_compression.md").read_text()
    assert "| 1/2 width (ngf 16) | gan_compression | 2 |" in md and "-8.00 ± 2.83" in md  # (40-50, 46-52)
    assert "lowers the FID-FMNIST (-8.00 ± 2.83 over 2 seeds" in md
    # 5 runs: 4 x 0.5 h + 1 h wall; CPU time over the 4 runs that recorded it: 4 x 900 s
    assert "Cost: 3.00 h of training" in md
    assert "CPU time 1.00 h over the 4 of 5 runs whose every epoch recorded it" in md
    assert "ngf8-gan-s0" in md.split("Not run yet")[1]
