"""Where dataset files are looked up, how they are downloaded, and how they are verified.

Lookup order for dataset ``name``: the ``data.root`` option (``ROOT/name/`` then ``ROOT/``), the
``KDKIT_DATA`` environment variable (same two forms), the user cache (``$XDG_CACHE_HOME/kdkit/name``,
by default ``~/.cache/kdkit/name``), then system folders such as Debian's ``/usr/share/datasets/``.
Downloads go to the user cache, through a temporary file that is checked before it is renamed into
place, so an interrupted or corrupted download never leaves a file that looks valid.
``KDKIT_MIRROR`` replaces the official base URL (for a local mirror, and for tests).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import DatasetError


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdkit"


def search_dirs(name: str, root: str | None, system: tuple[str, ...] = ()) -> list[Path]:
    dirs: list[Path] = []
    for base in (root, os.environ.get("KDKIT_DATA")):
        if base:
            dirs += [Path(base).expanduser() / name, Path(base).expanduser()]
    dirs.append(cache_dir() / name)
    dirs += [Path(s) for s in system]
    return dirs


def find_file(dirs: list[Path], candidates: tuple[str, ...]) -> Path | None:
    """First existing file named one of ``candidates`` in the first directory that has one."""
    for d in dirs:
        for c in candidates:
            if (d / c).is_file():
                return d / c
    return None


def file_hash(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    got = file_hash(path, "md5")
    if got != expected:
        raise DatasetError(
            f"{path} fails its checksum (md5 {got}, expected {expected}): the file is corrupt or not the "
            "official one; delete it to download again, or set data.verify=false for a re-packed copy"
        )


def download(url: str, dest: Path, md5: str | None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying ``md5`` before the file is put in place."""
    mirror = os.environ.get("KDKIT_MIRROR")
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}",
                      disable=not progress, leave=False) as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
        if md5 is not None:
            check_md5(Path(tmp), md5)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DatasetError(f"could not download {url}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def missing_error(name: str, files: list[str], dirs: list[Path], urls: list[str], why: str = "") -> DatasetError:
    where = ", ".join(str(d) for d in dict.fromkeys(dirs))
    return DatasetError(
        f"dataset '{name}' not found: looked for {', '.join(files)} in {where}{why}. Download "
        f"{' '.join(urls)} into one of these folders (or set data.root / KDKIT_DATA to their folder)"
    )


def extract_tar(archive: Path, dest: Path) -> None:
    """Extract a tar archive safely (no absolute paths, links or device files)."""
    import tarfile

    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract."))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        for item in tmp.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
    except tarfile.TarError as e:
        raise DatasetError(f"{archive} is not a valid tar archive (truncated?): {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
