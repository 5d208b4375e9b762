"""Jane Austen's six novels, as Debian's ``r-cran-janeaustenr`` ships them, for text classification: which
novel a passage of about 50 words comes from (6 classes).

The package keeps the novels in R's lazy-load database: ``data/Rdata.rdx`` (a gzip-compressed serialised
R list: each variable's offset and length in the ``.rdb`` file) and ``data/Rdata.rdb`` (each object a
4-byte big-endian length followed by a zlib stream of its serialisation). The ``rdata`` package parses R
serialisations; the lookup in the database is the few lines below. Each novel is a character vector of
the printed lines.

Install the data without R (a plain ``apt-get install`` pulls R itself, about 256 packages)::

    apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb /

The split is by chapter, so that neighbouring passages never fall on both sides: every fifth chapter of
each novel (the 5th, 10th, ...) is the test set. Passages are consecutive, non-overlapping runs of
``words`` words within one chapter (a chapter's last, shorter run is kept when it holds at least half as
many); the text before a novel's first chapter (title page, dedication) is left out. Passages are ordered
chapter by chapter with the novels interleaved (every novel's first chapter, then every second chapter..),
so that the first N training passages (``data.limit_train``) hold every class.
"""

from __future__ import annotations

import functools
import gzip
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError

SYSTEM_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
# the janeaustenr package's variables, in the order of its austen_books() (publication order)
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
TITLES = ("Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey", "Persuasion")
CHAPTER = re.compile(r"^\s*chapter\s+([0-9]+|[ivxlc]+)\b", re.IGNORECASE)
TEST_EVERY = 5  # every fifth chapter is a test chapter
INSTALL = ("apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb / (no R needed; or give "
           "data.root: a folder with Rdata.rdb and Rdata.rdx)")


@dataclass
class Passage:
    text: str
    novel: int  # index into NOVELS
    chapter: int  # 1-based, within its novel
    test: bool


def _rdata():
    try:
        import rdata
    except ImportError:
        raise DatasetError("the austen dataset reads R's data files with the rdata package, which is not installed: "
                           "pip install 'kdkit[text]'") from None
    return rdata


def _unserialize(raw: bytes, what: str):
    rdata = _rdata()
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS": a bare serialisation, as expected
            return rdata.conversion.convert(rdata.parser.parse_data(raw))
    except Exception as e:  # a damaged or foreign file: rdata raises many kinds
        raise DatasetError(f"{what}: not an R serialisation rdata can read ({type(e).__name__}: {e})") from None


def find_folder(root: str | None) -> Path:
    """The folder holding ``Rdata.rdb`` and ``Rdata.rdx``: ``data.root`` (itself or its ``data/``), else
    the Debian package's."""
    candidates = [Path(root).expanduser(), Path(root).expanduser() / "data"] if root else [SYSTEM_DIR]
    for folder in candidates:
        if (folder / "Rdata.rdb").is_file() and (folder / "Rdata.rdx").is_file():
            return folder
    where = f"data.root {root}" if root else str(SYSTEM_DIR)
    raise DatasetError(f"austen: no Rdata.rdb and Rdata.rdx in {where}; install Jane Austen's novels: {INSTALL}")


def read_novels(folder: Path) -> dict[str, list[str]]:
    """Each novel's lines, by the package's variable name (parsed once per process and folder state: a
    sweep's trials and a test's commands read them again)."""
    rdb, rdx = folder / "Rdata.rdb", folder / "Rdata.rdx"
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (rdb, rdx))
    return {name: list(lines) for name, lines in _read_novels(key, folder).items()}


@functools.lru_cache(maxsize=2)
def _read_novels(key: tuple, folder: Path) -> dict[str, tuple[str, ...]]:
    index = _unserialize(_gunzip(folder / "Rdata.rdx"), str(folder / "Rdata.rdx"))
    variables = index.get("variables") if isinstance(index, dict) else None
    missing = [n for n in NOVELS if variables is None or n not in variables]
    if missing:
        raise DatasetError(f"{folder / 'Rdata.rdx'} does not list the novels {', '.join(missing)}: not the janeaustenr "
                           "package's data")
    blob = (folder / "Rdata.rdb").read_bytes()
    novels = {}
    for name in NOVELS:
        offset, length = (int(v) for v in variables[name])
        raw = blob[offset:offset + length]
        if len(raw) != length or length < 4:
            raise DatasetError(f"{folder / 'Rdata.rdb'} is cut short: {name} lies past its end")
        size = struct.unpack(">I", raw[:4])[0]
        try:
            data = zlib.decompress(raw[4:])
        except zlib.error as e:
            raise DatasetError(f"{folder / 'Rdata.rdb'}: {name} is not zlib-compressed data ({e})") from None
        if len(data) != size:
            raise DatasetError(f"{folder / 'Rdata.rdb'}: {name} holds {len(data)} bytes, its header says {size}")
        lines = _unserialize(data, f"{folder / 'Rdata.rdb'} ({name})")
        novels[name] = tuple(str(line) for line in lines)
    return novels


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: not gzip-compressed data ({e})") from None


def chapters(lines: list[str]) -> list[list[str]]:
    """The lines of each chapter (its heading left out), in order; nothing before the first heading."""
    out: list[list[str]] = []
    for line in lines:
        if CHAPTER.match(line):
            out.append([])
        elif out:
            out[-1].append(line)
    return out


def passages(novels: dict[str, list[str]], words: int = 50) -> list[Passage]:
    """Every passage of every novel, in order (see the module docstring)."""
    found = []
    for k, name in enumerate(NOVELS):
        for c, body in enumerate(chapters(novels[name]), start=1):
            tokens = " ".join(body).split()
            for start in range(0, len(tokens), words):
                run = tokens[start:start + words]
                if len(run) * 2 >= words:
                    found.append(Passage(" ".join(run), k, c, c % TEST_EVERY == 0))
    if not found:
        raise DatasetError("austen: no chapter headings found in the novels (is this the janeaustenr data?)")
    return sorted(found, key=lambda p: (p.chapter, p.novel))  # stable: the novels interleaved, chapter by chapter


__all__ = ["INSTALL", "NOVELS", "Passage", "TITLES", "chapters", "find_folder", "passages", "read_novels"]
