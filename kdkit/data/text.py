"""Text classification data: passages and their labels, tokenised into ``input_ids`` and ``attention_mask``.

Sources:

- ``austen`` (:mod:`kdkit.data.austen`): which of Jane Austen's six novels a passage comes from;
- ``text_folder``: ``data.root`` with ``train.csv`` and ``test.csv`` (or ``.jsonl``: one JSON object a line),
  each with a text and a label column (``data.text_column``, ``data.label_column``); labels are class
  names (sorted) or integer ids ``0..K-1``;
- from Python, :func:`text_dataset` takes any two tables with those columns: a Hugging Face
  ``datasets.Dataset``, a pandas ``DataFrame`` or a dict of lists.

Tokenizer: a user's (``data.tokenizer``: a ``tokenizer.json`` of the ``tokenizers`` library, or a folder
holding one, as a fast tokenizer's ``save_pretrained`` writes it), else a WordPiece tokenizer (lower-cased,
BERT's pre-tokenisation, up to ``data.vocab_size`` entries) learnt from the training split only, the same
in every process (:func:`learn_vocabulary`). Each text becomes
``[CLS] tokens [SEP]``, cut to ``data.max_length`` and padded to it with the pad token; the attention mask
is 1 on real tokens and 0 on padding. The tokenizer is saved beside the run as ``tokenizer.json``.

A text dataset's ``in_channels`` is the tokenizer's vocabulary size (the one-hot width of a token): models
take it as their vocabulary, and a checkpoint's record refuses a tokenizer of another size.
"""

from __future__ import annotations

import csv
import functools
import heapq
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DatasetError
from .base import Dataset, ImageSet, root_folder

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_NAMES = ("[PAD]", "<pad>")
MAX_ROWS = 10_000_000
MAX_WORD_CHARS = 100  # a longer word is one [UNK] (BERT's limit)


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DatasetError("text datasets need the tokenizers package, which is not installed: "
                           "pip install 'kdkit[text]'") from None
    return tokenizers


def _symbols(word: str) -> tuple[str, ...]:
    return (word[0], *("##" + c for c in word[1:]))


def learn_vocabulary(word_counts: dict[str, int], vocab_size: int) -> list[str]:
    """A WordPiece vocabulary learnt by merging pairs (the byte-pair-encoding procedure of Sennrich et al.
    2016, with WordPiece's ``##`` continuation pieces, as Hugging Face's WordPiece trainer learns it), made
    deterministic: the most frequent pair is merged, ties go to the smaller pair in string order (the
    tokenizers library breaks them in hash order, which changes from process to process). Specials first,
    then every character (each also as a ``##`` piece where it continues a word), then merged pieces in the
    order they were made, until ``vocab_size`` or no pair occurs twice."""
    words = [list(_symbols(w)) for w in word_counts if len(w) <= MAX_WORD_CHARS]
    counts = [word_counts[w] for w in word_counts if len(w) <= MAX_WORD_CHARS]
    vocab = list(SPECIALS) + sorted({s for syms in words for s in syms} - set(SPECIALS))
    known = set(vocab)
    pairs: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(words):
        for pair in zip(syms, syms[1:]):
            pairs[pair] = pairs.get(pair, 0) + counts[i]
            where.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -neg:
            continue  # a stale entry: the pair's current count has an entry of its own
        if -neg < 2:
            break
        merged = pair[0] + pair[1][2:]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        changed = set()
        for i in sorted(where.pop(pair)):
            syms, c = words[i], counts[i]
            for old in zip(syms, syms[1:]):
                pairs[old] -= c
                changed.add(old)
            out, k = [], 0
            while k < len(syms):
                if k + 1 < len(syms) and (syms[k], syms[k + 1]) == pair:
                    out.append(merged)
                    k += 2
                else:
                    out.append(syms[k])
                    k += 1
            words[i] = out
            for new in zip(out, out[1:]):
                pairs[new] = pairs.get(new, 0) + c
                where.setdefault(new, set()).add(i)
                changed.add(new)
        pairs.pop(pair, None)
        for p in sorted(changed - {pair}):
            if pairs.get(p, 0) > 0:
                heapq.heappush(heap, (-pairs[p], p))
    return vocab


@functools.lru_cache(maxsize=4)
def _learnt(word_counts: tuple[tuple[str, int], ...], vocab_size: int) -> tuple[str, ...]:
    """:func:`learn_vocabulary`, remembered per process (a sweep's trials learn the same vocabulary)."""
    return tuple(learn_vocabulary(dict(word_counts), vocab_size))


def train_wordpiece(texts: Sequence[str], vocab_size: int):
    """A WordPiece tokenizer (lower-cased, BERT's normaliser and pre-tokeniser) whose vocabulary is learnt
    from ``texts`` by :func:`learn_vocabulary`: the same texts give the same tokenizer in every process."""
    tk = _tokenizers()
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    vocab = list(_learnt(tuple(counts.items()), vocab_size))
    tokenizer = tk.Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]",
                                              max_input_chars_per_word=MAX_WORD_CHARS))
    tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder = normalizer, pre, decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))])
    return tokenizer


def load_tokenizer(path: str):
    """A user's tokenizer: a ``tokenizer.json`` file, or a folder holding one."""
    tk = _tokenizers()
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise DatasetError(f"data.tokenizer {path}: no tokenizer.json there (a fast tokenizer's save_pretrained writes "
                           "one; kdkit reads no other tokenizer format)")
    try:
        return tk.Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises its own exception type
        raise DatasetError(f"data.tokenizer {file}: not a tokenizers file ({str(e).splitlines()[0]})") from None


def pad_id(tokenizer) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for name in PAD_NAMES:
        found = tokenizer.token_to_id(name)
        if found is not None:
            return int(found)
    raise DatasetError(f"the tokenizer has no pad token (looked for {', '.join(PAD_NAMES)} and its padding setting)")


def encode(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, int64 ``[N, max_length]``: each text cut to ``max_length``
    tokens (special tokens included) and padded to it."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(pad_id=pad_id(tokenizer), length=max_length)
    encoded = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encoded], dtype=torch.int64).reshape(len(encoded), max_length)
    mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.int64).reshape(len(encoded), max_length)
    return {"input_ids": ids, "attention_mask": mask}


def _check_texts(texts: Sequence[Any], where: str) -> list[str]:
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DatasetError(f"{where}: row {i + 1}: the text is a {type(text).__name__}, not a string")
        if not text.strip():
            raise DatasetError(f"{where}: row {i + 1}: empty text")
        out.append(text)
    if not out:
        raise DatasetError(f"{where}: no rows")
    return out


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.strip().isdigit()


def _labels(values: Sequence[Any], classes: list[str] | None, by_id: bool | None,
            where: str) -> tuple[torch.Tensor, list[str], bool]:
    """Class ids of ``values``, the class names and whether labels are ids: the training split decides
    (integers: ids ``0..K-1``; else names, sorted); the test split is read the same way."""
    values = list(values)
    if by_id is None:
        by_id = all(_integer(v) for v in values)
    if classes is None:
        classes = ([str(c) for c in range(max(int(v) for v in values) + 1)] if by_id
                   else sorted({str(v) for v in values}))
    index = {c: i for i, c in enumerate(classes)}
    ids = []
    for i, v in enumerate(values):
        if by_id:
            k = int(v) if _integer(v) else -1
        else:
            k = index.get(str(v), -1)
        if not 0 <= k < len(classes):
            shown = ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else "")
            kind = f"ids 0-{len(classes) - 1}" if by_id else shown
            raise DatasetError(f"{where}: row {i + 1}: label {v!r} is not one of the {len(classes)} classes ({kind})")
        ids.append(k)
    return torch.tensor(ids, dtype=torch.int64), classes, by_id


def _column(table: Any, name: str, where: str) -> list[Any]:
    try:
        values = table[name]
    except (KeyError, IndexError, TypeError, ValueError):
        values = None
    if values is None:
        names = getattr(table, "column_names", None) or list(getattr(table, "keys", lambda: [])())
        raise DatasetError(f"{where} has no column '{name}' (columns: {', '.join(map(str, names)) or 'none'}); set "
                           "data.text_column / data.label_column")
    return list(values)


def text_dataset(name: str, train: Any, test: Any, *, tokenizer: Any = None, vocab_size: int = 8000,
                 max_length: int = 128, text_column: str = "text", label_column: str = "label",
                 classes: list[str] | None = None, train_groups: Sequence[int] | None = None,
                 where: tuple[str, str] = ("the training table", "the test table")) -> Dataset:
    """A kdkit dataset of two tables with a text and a label column (a Hugging Face ``datasets.Dataset``, a
    pandas ``DataFrame``, a dict of lists); ``tokenizer`` a ``tokenizers.Tokenizer`` or the path of one
    (default: WordPiece trained on the training texts); ``train_groups`` keep samples of one group (a
    chapter, a document) on one side of the validation split."""
    texts = _check_texts(_column(train, text_column, where[0]), where[0])
    test_texts = _check_texts(_column(test, text_column, where[1]), where[1])
    labels, classes, by_id = _labels(_column(train, label_column, where[0]), classes, None, where[0])
    test_labels, _, _ = _labels(_column(test, label_column, where[1]), classes, by_id, where[1])
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(str(tokenizer))
    elif tokenizer is None:
        tokenizer = train_wordpiece(texts, vocab_size)
    groups = torch.as_tensor(list(train_groups), dtype=torch.int64) if train_groups is not None else None
    return Dataset(
        name=name,
        train=ImageSet(labels, images=encode(tokenizer, texts, max_length), groups=groups),
        test=ImageSet(test_labels, images=encode(tokenizer, test_texts, max_length)),
        num_classes=len(classes), in_channels=tokenizer.get_vocab_size(), image_size=(max_length,),
        mean=(), std=(), classes=classes, kind="text",
        files={"tokenizer.json": tokenizer.to_str().encode()},
    )


def read_table(path: Path) -> dict[str, list[Any]]:
    """A CSV (header row) or JSONL (one object a line) file as columns."""
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix == ".csv":
                rows = list(csv.DictReader(f))
            else:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise DatasetError(f"{path}: line {i} is not a JSON object")
                        rows.append(row)
                    if len(rows) > MAX_ROWS:
                        raise DatasetError(f"{path}: more than {MAX_ROWS} rows")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: line {e.lineno}: not JSON ({e.msg})") from None
    except csv.Error as e:
        raise DatasetError(f"{path}: not a CSV file ({e})") from None
    names = list(rows[0]) if rows else []
    return {n: [r.get(n) for r in rows] for n in names}


def _table_file(root: Path, split: str) -> Path:
    found = [root / f"{split}{ext}" for ext in (".csv", ".jsonl") if (root / f"{split}{ext}").is_file()]
    if len(found) != 1:
        raise DatasetError(f"text_folder: data.root {root} needs one {split}.csv or {split}.jsonl, found "
                           f"{len(found) or 'none'}")
    return found[0]


def load_text_folder(cfg) -> Dataset:
    root = root_folder(cfg.root, "text_folder", "train.csv and test.csv (or .jsonl) with text and label columns")
    files = [_table_file(root, split) for split in ("train", "test")]
    tables = [read_table(f) for f in files]
    return text_dataset("text_folder", *tables, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                        max_length=cfg.max_length, text_column=cfg.text_column, label_column=cfg.label_column,
                        where=(str(files[0]), str(files[1])))


def load_austen(cfg) -> Dataset:
    from .austen import TITLES, find_folder, passages, read_novels

    found = passages(read_novels(find_folder(cfg.root)))
    train = [p for p in found if not p.test]
    test = [p for p in found if p.test]
    table = lambda ps: {"text": [p.text for p in ps], "label": [p.novel for p in ps]}  # noqa: E731
    return text_dataset("austen", table(train), table(test), tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size,
                        max_length=cfg.max_length, classes=list(TITLES),
                        train_groups=[p.novel * 1000 + p.chapter for p in train])


__all__ = ["encode", "load_austen", "load_text_folder", "load_tokenizer", "pad_id", "read_table", "text_dataset",
           "train_wordpiece"]
