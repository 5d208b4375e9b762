"""The text distillation methods (TinyBERT, MiniLMv2, DistilBERT, Patient KD): each loss against its reference
formula at a realistic size (batch 16, length 128, 4 heads), padding never counting, the attention scores
read from taps equal to the model's own, and every method training end to end."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit import from_config
from kdkit.config import load_config
from kdkit.errors import ConfigError
from kdkit.losses.text import (
    attention_mse,
    attention_scores,
    cosine_hidden,
    masked_mse,
    patience,
    relation_kl,
    soft_cross_entropy,
)

pytest.importorskip("transformers")
B, T, H, HEADS = 16, 128, 64, 4


def _mask(lengths):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()


def _pairs(seed=0, width_t=H):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, generator=g), torch.randn(B, T, width_t, generator=g)


def _scramble_padding(x, mask, seed=1):
    """``x`` with every padded token's vector replaced by noise."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 50
    return torch.where(mask[..., None].bool(), x, noise)


LENGTHS = [T, 1, 7, 64, 100, 128, 33, 90, 12, 128, 5, 77, 64, 2, 120, 50]


def test_without_padding_the_losses_are_the_reference_formulas():
    s, t = _pairs()
    full = torch.ones(B, T, dtype=torch.long)
    # TinyBERT (task_distill.py): MSELoss on the hidden states and on the (unmasked) attention scores
    assert torch.allclose(masked_mse(s, t, full), F.mse_loss(s, t))
    qs, ks, qt, kt = (torch.randn(B, T, H, generator=torch.Generator().manual_seed(i)) for i in range(4))
    ref_s = torch.einsum("bhid,bhjd->bhij", qs.view(B, T, HEADS, -1).transpose(1, 2),
                         ks.view(B, T, HEADS, -1).transpose(1, 2)) / math.sqrt(H / HEADS)
    assert torch.allclose(attention_scores(qs, ks, HEADS), ref_s, atol=1e-4)
    ref_t = attention_scores(qt, kt, HEADS)
    assert torch.allclose(attention_mse(ref_s, ref_t, full), F.mse_loss(ref_s, ref_t), rtol=1e-5)
    # TinyBERT's prediction loss: (- targets_prob * student_likelihood).sum(-1).mean()
    zs, zt = s[:, 0, :6], t[:, 0, :6]
    ref = (-F.softmax(zt / 2, -1) * F.log_softmax(zs / 2, -1)).sum(-1).mean()
    assert torch.allclose(soft_cross_entropy(zs, zt, 2.0), ref)
    # Patient KD (nli_utils.patience_loss, normalized): MSE of the normalised [CLS] states
    cls_s, cls_t = s[:, :3], t[:, :3]
    ref = F.mse_loss(cls_s / cls_s.norm(dim=2, keepdim=True), cls_t / cls_t.norm(dim=2, keepdim=True))
    assert torch.allclose(patience(cls_s, cls_t), ref)


def test_minilm_relations_against_the_paper_formula():
    """MiniLMv2 eq. 3, re-derived with explicit heads: KL(teacher || student) of the relations, summed over
    keys, averaged over relation heads and queries; student width 32, teacher 64, 4 relation heads."""
    s, t = torch.randn(B, T, 32), torch.randn(B, T, 64)
    full = torch.ones(B, T, dtype=torch.long)
    total = 0.0
    for a in range(HEADS):
        rs = s[..., a * 8:(a + 1) * 8]
        rt = t[..., a * 16:(a + 1) * 16]
        p_s = torch.softmax(rs @ rs.transpose(1, 2) / math.sqrt(8), -1)
        p_t = torch.softmax(rt @ rt.transpose(1, 2) / math.sqrt(16), -1)
        total = total + (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert torch.allclose(relation_kl(s, t, HEADS, full), total / HEADS, rtol=1e-4)


def test_distilbert_cosine_against_the_reference_with_padding():
    """The authors' distiller.py: masked_select the real tokens, CosineEmbeddingLoss with target 1."""
    s, t = _pairs()
    mask = _mask(LENGTHS)
    sel = mask[..., None].expand_as(s).bool()
    s_sel, t_sel = torch.masked_select(s, sel).view(-1, H), torch.masked_select(t, sel).view(-1, H)
    ref = torch.nn.CosineEmbeddingLoss()(s_sel, t_sel, torch.ones(len(s_sel)))
    assert torch.allclose(cosine_hidden(s, t, mask), ref, rtol=1e-5)


def test_padding_never_counts_in_any_loss():
    s, t = _pairs()
    mask = _mask(LENGTHS)
    s2, t2 = _scramble_padding(s, mask), _scramble_padding(t, mask, 2)
    assert not torch.equal(s, s2)
    for fn in (masked_mse, cosine_hidden):
        assert torch.allclose(fn(s, t, mask), fn(s2, t2, mask), rtol=1e-5)
    assert torch.allclose(relation_kl(s, t, HEADS, mask), relation_kl(s2, t2, HEADS, mask), rtol=1e-5)
    sc, tc = attention_scores(s, t, HEADS), attention_scores(t, s, HEADS)
    sc2, tc2 = attention_scores(s2, t2, HEADS), attention_scores(t2, s2, HEADS)
    assert torch.allclose(attention_mse(sc, tc, mask), attention_mse(sc2, tc2, mask), rtol=1e-5)
    # and the gradient through padded positions is zero, never NaN
    s.requires_grad_(True)
    relation_kl(s, t, HEADS, mask).backward()
    assert torch.isfinite(s.grad).all() and (s.grad[~mask.bool()] == 0).all()


def test_attention_scores_from_taps_are_the_models_own():
    """softmax(scores from the tapped query and key projections + the mask) equals the attention
    probabilities a BERT reports itself (output_attentions), padding included."""
    from kdkit.features import FeatureTap
    from kdkit.methods.transformer import head_count
    from kdkit.models import create_model

    torch.manual_seed(0)
    model = create_model("hf_bert", num_classes=3, in_channels=300, layers=2, hidden=H, heads=HEADS).eval()
    ids = torch.randint(5, 300, (B, T))
    mask = _mask(LENGTHS)
    specs = [f"bert.encoder.layer.1.attention.self.{n}" for n in ("query", "key")]
    with torch.no_grad(), FeatureTap(model, specs) as tap:
        probs = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[1]
        scores = attention_scores(tap[specs[0]], tap[specs[1]], head_count(model))
    ours = torch.softmax(scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")), -1)
    assert torch.allclose(ours, probs, atol=1e-5)


def _cfg(tmp_path, method, student, teacher, epochs=1, **data):
    """A distillation config on the tables in ``tmp_path/d``; ``teacher`` a checkpoint path or a spec."""
    if isinstance(teacher, str):
        teacher = {"name": "hf_bert", "kwargs": {"layers": 4, "hidden": 64, "heads": 4, "dropout": 0.0},
                   "checkpoint": teacher}
    return {"task": "text_classification", "model": student, "method": method, "teacher": teacher,
            "data": {"name": "text_folder", "root": str(tmp_path / "d"), "max_length": 24, "vocab_size": 80,
                     "batch_size": 16, **data},
            "optim": {"name": "adamw", "lr": 0.003},
            "train": {"epochs": epochs, "progress": False, "out_dir": str(tmp_path / "runs"), "run_name": "s",
                      "existing": "overwrite"}}


def _run(tmp_path, method, student, teacher, epochs=1, **data):
    return from_config(load_config(base=_cfg(tmp_path, method, student, teacher, epochs, **data)), log=lambda m: None)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from test_text import _write_tables

    root = tmp_path_factory.mktemp("text_teacher")
    _write_tables(root / "d")
    base = {"task": "text_classification", "model": {"name": "hf_bert", "kwargs": {
        "layers": 4, "hidden": 64, "heads": 4, "dropout": 0.0}},
        "data": {"name": "text_folder", "root": str(root / "d"), "max_length": 24, "vocab_size": 80, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 0.003},
        "train": {"epochs": 2, "progress": False, "out_dir": str(root / "runs"), "run_name": "t"}}
    from_config(load_config(base=base), log=lambda m: None).fit()
    return root


SMALL = {"name": "hf_bert", "kwargs": {"layers": 2, "hidden": 32, "heads": 4, "dropout": 0.0}}


@pytest.mark.parametrize("method", ["tinybert", "minilm", "distilbert", "pkd",
                                    {"name": "tinybert", "stage1_epochs": 1, "main_intermediate": False},
                                    {"name": "pkd", "strategy": "last"}])
def test_text_methods_train_end_to_end(teacher, tmp_path, method):
    import shutil

    shutil.copytree(teacher / "d", tmp_path / "d")
    epochs = 2 if isinstance(method, dict) and method.get("stage1_epochs") else 1
    trainer = _run(tmp_path, method, SMALL, str(teacher / "runs/t/checkpoint.pt"), epochs=epochs)
    before = {k: v.clone() for k, v in trainer.distiller.student.state_dict().items()}
    result = trainer.fit()
    assert math.isfinite(result["train/loss"]) and 0 <= result["test/accuracy"] <= 100
    after = trainer.distiller.student.state_dict()
    assert not torch.equal(before["bert.encoder.layer.0.attention.self.query.weight"],
                           after["bert.encoder.layer.0.attention.self.query.weight"])


def test_minilm_trains_a_student_of_other_width_and_heads(teacher, tmp_path):
    """A 2-head, 32-wide student learns from a 4-head, 64-wide teacher: the relation term falls."""
    import shutil

    shutil.copytree(teacher / "d", tmp_path / "d")
    student = {"name": "hf_bert", "kwargs": {"layers": 2, "hidden": 32, "heads": 2, "dropout": 0.0}}
    trainer = _run(tmp_path, {"name": "minilm", "weight": 10.0}, student, str(teacher / "runs/t/checkpoint.pt"),
                   epochs=4)
    assert trainer.distiller.methods[0].heads == 4
    trainer.fit()
    relation = [row["train/relation"] for row in trainer.history]
    assert relation[-1] < relation[0]


def test_tinybert_refuses_other_head_counts_and_bad_maps(teacher, tmp_path):
    import shutil

    shutil.copytree(teacher / "d", tmp_path / "d")
    ckpt = str(teacher / "runs/t/checkpoint.pt")
    two = {"name": "hf_bert", "kwargs": {"layers": 2, "hidden": 32, "heads": 2}}
    with pytest.raises(ConfigError, match="the student has 2 heads, the teacher 4 .*use minilm"):
        _run(tmp_path, "tinybert", two, ckpt)
    _run(tmp_path, {"name": "tinybert", "attention_weight": 0}, two, ckpt)  # hidden states only: fine
    with pytest.raises(ConfigError, match=r"layer_map pair \[1, 9\]: the student has hidden states 0-2, the "
                                          r"teacher 0-4"):
        _run(tmp_path, {"name": "tinybert", "layer_map": [[1, 9]]}, SMALL, ckpt)
    with pytest.raises(ConfigError, match="relation heads do not divide"):
        _run(tmp_path, {"name": "minilm", "relation_heads": 3}, SMALL, ckpt)


def test_text_methods_need_a_transformer(tmp_path, digits_cfg, teacher_ckpt):
    cfg = digits_cfg(tmp_path, method="minilm", teacher={"name": "cnn_small", "checkpoint": teacher_ckpt})
    with pytest.raises(ConfigError, match="minilm needs a transformer"):
        from_config(cfg, log=lambda m: None)


def test_a_model_saved_with_save_pretrained_is_a_teacher(teacher, tmp_path):
    """A teacher brought as a save_pretrained folder (config.json, model.safetensors, tokenizer.json): built
    from the folder alone, its outputs those of the network saved; pickle weights, remote code and a label
    count unlike the data's are refused in one line."""
    import json
    import shutil

    from kdkit.engine.rebuild import load_network

    shutil.copytree(teacher / "d", tmp_path / "d")
    net = load_network(teacher / "runs/t/checkpoint.pt").model.eval()
    folder = tmp_path / "saved"
    net.save_pretrained(folder, safe_serialization=True)
    shutil.copy(teacher / "runs/t/tokenizer.json", folder / "tokenizer.json")
    trainer = _run(tmp_path, "distilbert", SMALL, {"name": f"hf:{folder}"}, tokenizer=str(folder))
    loaded = trainer.distiller.teachers[0]
    hf = next(m for m in loaded.modules() if hasattr(m, "config"))
    assert hf.config._attn_implementation == "eager" and not loaded.training
    ids = torch.randint(5, loaded.config.vocab_size, (4, 24))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        mine, theirs = loaded(**batch), net(**batch)  # kdkit's networks give the output object's .logits
        assert torch.allclose(getattr(mine, "logits", mine), getattr(theirs, "logits", theirs), atol=1e-6)
    x = next(iter(trainer.loaders.test)).inputs  # and on real passages of the test split
    with torch.no_grad():
        mine, theirs = loaded(**x), net(**x)
        assert torch.allclose(getattr(mine, "logits", mine), getattr(theirs, "logits", theirs), atol=1e-6)
    assert math.isfinite(trainer.fit()["train/loss"])

    bad = tmp_path / "pickled"
    bad.mkdir()
    shutil.copy(folder / "config.json", bad / "config.json")
    (bad / "pytorch_model.bin").write_bytes(b"not loaded")
    remote = tmp_path / "remote"
    shutil.copytree(folder, remote)
    conf = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**conf, "auto_map": {"AutoModel": "evil.Model"}}))
    labels = tmp_path / "labels"
    shutil.copytree(folder, labels)
    (labels / "config.json").write_text(json.dumps({**conf, "num_labels": 5, "id2label": {str(i): str(i) for i in
                                                                                          range(5)}}))
    for folder_, message in ((bad, "pytorch_model.bin: pickle files, which kdkit never loads"),
                             (remote, "maps to remote code"), (labels, "classifies 5 labels, the dataset has 2")):
        with pytest.raises(ConfigError, match=message):
            _run(tmp_path, "distilbert", SMALL, {"name": f"hf:{folder_}"}, tokenizer=str(folder))


def test_two_gloo_ranks_distil_text_as_one_process_counts(teacher, tmp_path):
    """minilm under 2-rank DDP (gloo): the ranks end identical, and the accuracy and macro-F1 from the
    confusion matrix summed over the ranks' shards equal one process evaluating rank 0's weights."""
    import shutil

    from conftest import train_ranks

    from kdkit.engine.evaluate import evaluate

    shutil.copytree(teacher / "d", tmp_path / "d")
    cfg = _cfg(tmp_path, "minilm", SMALL, str(teacher / "runs/t/checkpoint.pt"), eval_batch_size=3)
    cfg["train"] = {"epochs": 1, "progress": False}
    ranks, ddp = train_ranks(cfg, tmp_path)
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    single = from_config(load_config(base=cfg), run_dir=tmp_path / "single", log=lambda m: None)
    single.distiller.load_state_dict(ranks[0])
    metrics = evaluate(single.distiller.student, single.loaders.test, task=single.task)
    assert metrics["accuracy"] == pytest.approx(ddp["test/accuracy"])
    assert metrics["macro_f1"] == pytest.approx(ddp["test/macro_f1"])


def test_a_teacher_trained_with_another_tokenizer_is_refused(teacher, tmp_path):
    """The teacher's checkpoint records its vocabulary: a student run whose tokenizer has another size is
    refused in one line that names data.tokenizer, before anything is written."""
    import shutil

    from kdkit.errors import CheckpointError

    shutil.copytree(teacher / "d", tmp_path / "d")
    with pytest.raises(CheckpointError, match=r"input channels \(a text model: tokens in its vocabulary\).*"
                                              r"give the teacher's tokenizer as data.tokenizer"):
        _run(tmp_path, "kd", SMALL, str(teacher / "runs/t/checkpoint.pt"), vocab_size=40)
    assert not (tmp_path / "runs").exists()
    _run(tmp_path, "kd", SMALL, str(teacher / "runs/t/checkpoint.pt"),
         vocab_size=40, tokenizer=str(teacher / "runs/t/tokenizer.json"))  # the teacher's own: accepted
