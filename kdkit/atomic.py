"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never a partial one. Here, at
the bottom of kdkit's layers, so that every module writes files the same way."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError, first_line


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(f)`` into a temporary file ``.<name>.*.tmp`` in the same folder, fsync, then rename it over
    ``path`` (and fsync the folder): a reader, or a crash, sees the old file or the new one."""
    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}; {kept}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what a plain open() would have given
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk: OSError from Python, RuntimeError from torch.save
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(e)  # torch.save raises "unexpected pos ..." while handling the OSError
        if cause is None and "writ" not in str(e).lower():
            raise  # not a failed write (an object that cannot be saved): the error as it is
        reason = getattr(cause, "strerror", None) or first_line(e)
        raise OutputError(f"cannot write {path} ({reason[:200]}; is the disk full?); {kept}") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _os_error(e: BaseException) -> OSError | None:
    """``e`` or the first OSError in the chain of errors it was raised from or while handling."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
