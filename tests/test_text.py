"""Text classification: Jane Austen's novels from Debian's r-cran-janeaustenr, CSV/JSONL tables, tokenizers,
the text_classification task, Hugging Face models built from configurations, and the CLI end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdkit import from_config
from kdkit.config import DataConfig, load_config
from kdkit.errors import ConfigError, DatasetError

pytest.importorskip("transformers")
AUSTEN = Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
needs_austen = pytest.mark.skipif(not AUSTEN.is_file(), reason="Debian's r-cran-janeaustenr is not unpacked (.ci/run)")
TINY = {"name": "hf_bert", "kwargs": {"layers": 1, "hidden": 32, "heads": 2, "dropout": 0.0}}


@pytest.fixture(scope="module")
def austen():
    from kdkit.data import load_dataset

    return load_dataset(DataConfig(name="austen", max_length=64, vocab_size=500))


@needs_austen
def test_the_six_novels_are_read_and_split_by_chapter(austen):
    from kdkit.data.austen import NOVELS, chapters, find_folder, passages, read_novels

    novels = read_novels(find_folder(None))
    # the printed chapter counts of the six novels (Penguin editions)
    assert [len(chapters(novels[n])) for n in NOVELS] == [50, 61, 48, 55, 31, 24]
    found = passages(novels)
    assert all(25 <= len(p.text.split()) <= 50 for p in found)
    sides = {}
    for p in found:
        sides.setdefault((p.novel, p.chapter), set()).add(p.test)
    assert all(len(s) == 1 for s in sides.values())  # no chapter on both sides
    assert {k for k, s in sides.items() if True in s} == {k for k in sides if k[1] % 5 == 0}
    assert found[0].text.startswith("The family of Dashwood had long been settled in Sussex.")
    assert austen.num_classes == 6 and austen.classes[1] == "Pride & Prejudice" and austen.kind == "text"
    assert len(austen.train) + len(austen.test) == len(found) and len(austen.test) == sum(p.test for p in found)
    assert sorted(austen.train.labels[:600].unique().tolist()) == list(range(6))  # the novels interleaved
    assert set(austen.train.images) == {"input_ids", "attention_mask"} and austen.in_channels == 500


@needs_austen
def test_the_validation_split_keeps_chapters_whole(austen):
    from kdkit.data import split_train_val

    train, val = split_train_val(austen.train, 0.1, seed=3)
    assert abs(len(val) - 0.1 * len(austen.train)) < 100  # whole chapters: close to, not exactly, 10%
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    again, _ = split_train_val(austen.train, 0.1, seed=3)
    assert torch.equal(again.labels, train.labels) and torch.equal(again.groups, train.groups)


def test_tokenizer_is_trained_on_the_training_split_and_pads_to_length():
    from kdkit.data.text import SPECIALS, encode, train_wordpiece

    texts = ["It is a truth universally acknowledged", "that a single man in possession of a good fortune"] * 20
    a, b = train_wordpiece(texts, 200), train_wordpiece(texts, 200)
    assert a.to_str() == b.to_str()  # deterministic
    assert [a.token_to_id(t) for t in SPECIALS] == [0, 1, 2, 3, 4]
    enc = encode(a, ["a truth", "that a single man in possession of a good fortune, universally so"], 8)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (2, 8) and ids[0, 0] == 2 and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids[0, 3] == 3 and (ids[0, 4:] == 0).all() and mask[1].all() and ids[1, -1] == 3  # cut: [SEP] kept


def _write_tables(folder: Path, fmt: str = "csv", rows=None, test_rows=None):
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    words = {"sea": "wave tide salt shore boat", "town": "street shop market square lamp"}
    rows = rows or [{"text": " ".join(words[c].split()[i % 5:] + words[c].split()[:i % 5]), "label": c}
                    for i in range(40) for c in words]
    test_rows = test_rows or rows[:10]
    for name, part in (("train", rows), ("test", test_rows)):
        if fmt == "csv":
            with (folder / f"{name}.csv").open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(part[0]))
                w.writeheader()
                w.writerows(part)
        else:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_folder_reads_csv_and_jsonl(tmp_path, fmt):
    from kdkit.data import load_dataset

    _write_tables(tmp_path, fmt)
    ds = load_dataset(DataConfig(name="text_folder", root=str(tmp_path), max_length=16, vocab_size=100))
    assert ds.classes == ["sea", "town"] and len(ds.train) == 80 and ds.train.labels[:2].tolist() == [0, 1]
    assert ds.train.images["input_ids"].shape == (80, 16)


def test_tables_from_python_and_integer_labels():
    from kdkit.data.text import text_dataset

    train = {"sentence": ["good day", "bad day", "fine day", "awful day"] * 5, "y": [1, 0, 1, 0] * 5}
    ds = text_dataset("mine", train, train, text_column="sentence", label_column="y", max_length=8, vocab_size=50)
    assert ds.classes == ["0", "1"] and ds.train.labels[:4].tolist() == [1, 0, 1, 0]
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(train)
    ds2 = text_dataset("mine", frame, frame, text_column="sentence", label_column="y", max_length=8, vocab_size=50)
    assert torch.equal(ds2.train.images["input_ids"], ds.train.images["input_ids"])


@pytest.mark.parametrize("damage,message", [
    ("no_label", "has no column 'label' (columns: text)"),
    ("unknown", "row 2: label 'forest' is not one of the 2 classes (sea, town)"),
    ("empty", "row 3: empty text"),
    ("id_range", "row 1: label 7 is not one of the 2 classes (ids 0-1)"),
])
def test_bad_tables_are_refused_in_one_line(tmp_path, damage, message):
    rows = [{"text": t, "label": c} for _ in range(3) for t, c in (("wave tide", "sea"), ("street shop", "town"))]
    test = [dict(r) for r in rows]
    if damage == "no_label":
        rows = [{"text": r["text"]} for r in rows]
    elif damage == "unknown":
        test[1]["label"] = "forest"
    elif damage == "empty":
        rows[2]["text"] = "  "
    elif damage == "id_range":
        rows = [{"text": r["text"], "label": i % 2} for i, r in enumerate(rows)]
        test = [{"text": "wave", "label": 7}]
    _write_tables(tmp_path / "d", "csv" if damage == "no_label" else "jsonl", rows, test)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"task": "text_classification", "model": TINY, "data": {
        "name": "text_folder", "root": str(tmp_path / "d"), "max_length": 8, "vocab_size": 50},
        "train": {"epochs": 1, "out_dir": str(tmp_path / "runs")}}))
    p = subprocess.run([sys.executable, "-m", "kdkit", "train", str(cfg)], capture_output=True, text=True)
    assert p.returncode == 3 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_model_vocabulary_unlike_the_tokenizer_is_refused(tmp_path):
    _write_tables(tmp_path / "d")
    base = {"task": "text_classification", "model": {"name": "hf:bert", "kwargs": {
        "vocab_size": 999, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
        "intermediate_size": 64}},
        "data": {"name": "text_folder", "root": str(tmp_path / "d"), "max_length": 16, "vocab_size": 60},
        "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path / "r")}}
    with pytest.raises(ConfigError, match="model.kwargs.vocab_size is 999, but the tokenizer has 58 tokens"):
        from_config(load_config(base=base), log=lambda m: None)


def test_macro_f1_and_accuracy_agree_with_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from kdkit.tasks import create_task

    task = create_task("text_classification")
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(300, 5, generator=g), torch.randint(0, 4, (300,), generator=g)  # class 4: never true
    counts = sum(task.eval_counts(logits[i:i + 64], target[i:i + 64], None) for i in range(0, 300, 64))
    m = task.metrics(counts.tolist(), with_teacher=False)
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(100 * accuracy_score(target, pred))
    assert m["macro_f1"] == pytest.approx(100 * f1_score(target, pred, average="macro"))


def test_padding_never_counts():
    """The same texts padded to 16 or to 48 tokens give the same logits and count the same tokens."""
    from kdkit.data.text import encode, train_wordpiece
    from kdkit.models import create_model
    from kdkit.tasks import create_task

    texts = ["wave tide salt shore", "street shop market square lamp and a long road home"] * 32  # batch 64
    tok = train_wordpiece(texts, 80)
    short, long = encode(tok, texts, 16), encode(tok, texts, 48)
    torch.manual_seed(0)
    model = create_model("hf_bert", num_classes=3, in_channels=tok.get_vocab_size(), layers=2, hidden=32,
                         heads=4).eval()
    with torch.no_grad():
        a, b = model(**short).logits, model(**long).logits
    assert torch.allclose(a, b, atol=1e-5)
    task = create_task("text_classification")
    assert int(task.units(short)) == int(task.units(long)) == int(short["attention_mask"].sum()) < 64 * 16


@needs_austen
def test_austen_end_to_end_from_the_cli(tmp_path, capsys):
    """Train, eval, export and report a tiny BERT on Jane Austen through the command line (in process; the
    interpreter-level entry point is tested by the other subprocess tests); the tokenizer is saved beside
    the run, and ONNX Runtime agrees with PyTorch."""
    from kdkit.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"task": "text_classification", "model": TINY, "method": "vanilla", "data": {
        "name": "austen", "max_length": 32, "vocab_size": 500, "limit_train": 600, "batch_size": 32},
        "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.01},
        "train": {"epochs": 2, "out_dir": str(tmp_path / "runs"), "run_name": "r", "progress": False}}))
    assert main(["train", str(cfg)]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # (a tiny model on 600 passages barely learns in 2 epochs: configs/austen reaches 78% in 3; docs/text.md)
    assert 0 < final["test/macro_f1"] <= final["test/accuracy"] <= 100 and final["time/tokens_per_s"] > 0
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(tmp_path / "runs/r/tokenizer.json")).get_vocab_size() == 500
    assert main(["eval", str(tmp_path / "runs/r/checkpoint.pt")]) == 0  # the last epoch's network, as tested
    shown = capsys.readouterr().out
    assert f"on austen test (2599 texts): accuracy {final['test/accuracy']:.4g}  macro_f1 " \
           f"{final['test/macro_f1']:.4g}" in shown, shown
    assert main(["export", str(tmp_path / "runs/r/best.pt"), "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr()
    assert "top-1 agreement 100.00%" in out.out and "Evaluation failed" not in out.err
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert "| test accuracy (final) |" in (tmp_path / "report/report.md").read_text()


def test_hf_model_types_build_from_configurations(tmp_path):
    _write_tables(tmp_path / "d")
    for name, kwargs in (("hf:distilbert", {"n_layers": 1, "dim": 32, "n_heads": 2, "hidden_dim": 64}),
                         ("hf:roberta", {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                         "intermediate_size": 64, "pad_token_id": 0})):
        base = {"task": "text_classification", "model": {"name": name, "kwargs": kwargs},
                "data": {"name": "text_folder", "root": str(tmp_path / "d"), "max_length": 16, "vocab_size": 60,
                         "batch_size": 8},
                "optim": {"name": "adamw", "lr": 0.003},
                "train": {"epochs": 3, "progress": False, "out_dir": str(tmp_path / name.replace(":", "_"))}}
        trainer = from_config(load_config(base=base), log=lambda m: None)
        assert trainer.distiller.student.config._attn_implementation == "eager"
        result = trainer.fit()
        assert result["test/accuracy"] == 100.0  # two classes of disjoint words
    with pytest.raises(ConfigError, match="hf:nosuchtype"):
        from_config(load_config(base={**base, "model": "hf:nosuchtype"}), log=lambda m: None)


def test_text_run_killed_and_resumed_is_bit_identical(tmp_path):
    from conftest import killed_and_resumed

    _write_tables(tmp_path / "d")
    cfg = {"task": "text_classification", "model": TINY | {"kwargs": {**TINY["kwargs"], "dropout": 0.1}},
           "data": {"name": "text_folder", "root": str(tmp_path / "d"), "max_length": 16, "vocab_size": 60,
                    "batch_size": 16},
           "optim": {"name": "adamw", "lr": 0.003}, "train": {"epochs": 2, "progress": False}}
    killed_and_resumed(cfg, tmp_path / "runs")


def test_missing_data_says_how_to_install_it(tmp_path):
    from kdkit.data import load_dataset

    with pytest.raises(DatasetError, match="apt-get download r-cran-janeaustenr"):
        load_dataset(DataConfig(name="austen", root=str(tmp_path)))


def test_without_the_text_extra_one_line_says_how_to_install_it(tmp_path):
    """transformers and tokenizers made unimportable: a text model and a text dataset each stop with one line
    naming the extra."""
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['tokenizers'] = None\n"
            "from kdkit.cli import entry; sys.argv = ['kdkit'] + sys.argv[1:]; entry()")
    cfg = tmp_path / "c.yaml"
    _write_tables(tmp_path / "d")
    for model, data in ((TINY, {"name": "digits"}), ("cnn_tiny", {"name": "text_folder", "root": str(tmp_path / "d")})):
        cfg.write_text(json.dumps({"task": "text_classification" if model == TINY else "classification",
                                   "model": model, "data": data, "train": {"out_dir": str(tmp_path / "runs")}}))
        p = subprocess.run([sys.executable, "-c", code, "train", str(cfg)], capture_output=True, text=True)
        assert p.returncode in (2, 3) and "pip install 'kdkit[text]'" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
