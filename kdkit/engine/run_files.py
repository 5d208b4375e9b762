"""Upkeep of a run directory when a run starts or resumes, so that a run killed at any moment (in a step,
in evaluation, while writing a checkpoint or a metrics line) continues as if it had not been:

- temporary files of interrupted checkpoint writes (``.checkpoint.pt.*.tmp``) are removed; complete
  checkpoints are never touched;
- ``metrics.jsonl`` is made to hold exactly one line per completed epoch: a partly written last line and
  lines past the checkpoint's epoch (or an earlier final line) are dropped, and the checkpoint's own
  metrics are added when the kill came between the checkpoint and its metrics line;
- ``best.pt`` is rewritten from the checkpoint when the kill came between the two writes of an epoch
  whose model was the best so far.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, load_config
from ..errors import CheckpointError, ConfigError
from .checkpoint import make_folder, write_atomic

CHECKPOINTS = ("checkpoint.pt", "best.pt")


def default_run_dir(cfg: RunConfig) -> Path:
    """``train.out_dir/train.run_name``, by default ``<data>-<model>-<methods>-<time>``."""
    from ..methods import method_name

    name = cfg.train.run_name or "-".join(
        [cfg.data.name, cfg.model.name, "+".join(method_name(m) for m in cfg.method), time.strftime("%Y%m%d-%H%M%S")])
    return Path(cfg.train.out_dir) / name


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes of the run's checkpoints left behind."""
    removed = []
    for name in CHECKPOINTS:
        for p in run_dir.glob(f".{name}.*.tmp"):
            if p.is_symlink() or p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def parse_rows(text: str) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` text: one mapping per line; a line cut by a kill (or anything that
    is not a JSON mapping) is skipped."""
    return [row for row in map(_parse_line, text.splitlines()) if row is not None]


def _parse_line(line: str) -> dict[str, Any] | None:
    """One metrics line as a mapping, or None for a line cut by a kill, a blank one or one that is not a
    JSON mapping."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


MAX_ROWS = 200_000  # metrics lines a reader takes from one run (an epoch a line: far more than any run has)
MAX_METRICS_BYTES = 256 << 20
TEXT_FIELDS = ("stage", "deployed")  # the only fields of a metrics line that are not numbers (and "final")


def check_row(row: dict[str, Any]) -> None:
    """A metrics line's fields: ``final`` a boolean, ``stage``/``deployed`` short strings, every other value
    a number (an ``epoch`` an integer); a ValueError naming the first field that is not."""
    for key, value in row.items():
        if key == "final":
            ok = isinstance(value, bool)
        elif key in TEXT_FIELDS:
            ok = isinstance(value, str) and len(value) <= 200
        elif key == "epoch":
            ok = type(value) is int
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or len(key) > 200:
            raise ValueError(f"'{key[:60]}' is {type(value).__name__} {str(value)[:40]!r}, not "
                             + ("a boolean" if key == "final" else "a short string" if key in TEXT_FIELDS
                                else "an integer" if key == "epoch" else "a number"))


def stream_rows(path: Path, max_rows: int = MAX_ROWS, max_bytes: int = MAX_METRICS_BYTES) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` that kdkit did not necessarily write (a report's input), read line by
    line within ``max_rows`` lines and ``max_bytes`` bytes, every row checked (:func:`check_row`); a line cut
    by a kill is skipped. A ValueError says what is wrong and where."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path.name} is {size:,} bytes, more than the {max_bytes:,} a run's metrics can be")
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number > max_rows:
                raise ValueError(f"{path.name} has more than {max_rows:,} lines (one per epoch)")
            try:
                row = _parse_line(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path.name} line {number} is not UTF-8 ({e.reason} at byte {e.start})") from None
            if row is not None:
                try:
                    check_row(row)
                except ValueError as e:
                    raise ValueError(f"{path.name} line {number}: {e}") from None
                rows.append(row)
    return rows


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """:func:`parse_rows` of ``run_dir/metrics.jsonl`` (none when there is no such file)."""
    path = run_dir / "metrics.jsonl"
    return parse_rows(path.read_text(errors="replace")) if path.is_file() else []


def reconcile_metrics(run_dir: Path, epoch: int, last: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Make ``metrics.jsonl`` hold the epochs ``1..epoch`` once each (the last from ``last``, the
    checkpoint's metrics, if its line is missing); returns those lines."""
    path = run_dir / "metrics.jsonl"
    before = path.read_text(errors="replace") if path.is_file() else None
    lines: list[dict[str, Any]] = []
    for row in parse_rows(before or ""):
        if not row.get("final") and type(row.get("epoch")) is int and len(lines) < row["epoch"] <= epoch:
            lines.append(row)
    if last and last.get("epoch") == epoch and (not lines or lines[-1]["epoch"] < epoch):
        lines.append(last)
    text = "".join(json.dumps(row) + "\n" for row in lines)
    if text != before:
        write_atomic(path, lambda f: f.write(text.encode()))
    return lines


def final_line(run_dir: Path, epoch: int) -> dict[str, Any] | None:
    """The ``final`` (test) line of ``metrics.jsonl`` written after epoch ``epoch``, if there is one."""
    finals = [row for row in read_rows(run_dir) if row.get("final") and row.get("epoch") == epoch]
    return finals[-1] if finals else None


def repair_best(run_dir: Path, epoch: int, best_epoch_is_last: bool) -> bool:
    """Copy ``checkpoint.pt`` to ``best.pt`` when the last completed epoch was the best and ``best.pt``
    does not hold it (the kill came between the two writes); returns whether it did."""
    best, ckpt = run_dir / "best.pt", run_dir / "checkpoint.pt"
    if not best_epoch_is_last or not ckpt.is_file():
        return False
    if best.is_file():
        try:
            if torch.load(best, map_location="cpu", weights_only=True).get("epoch") == epoch:
                return False
        except Exception:  # noqa: BLE001  (an unreadable best.pt is replaced, whatever the reason)
            pass
    try:
        with open(ckpt, "rb") as src:
            write_atomic(best, lambda f: shutil.copyfileobj(src, f))
    except OSError as e:
        raise CheckpointError(f"{best}: cannot be restored from {ckpt}: {e}") from None
    return True


def write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """``config.yaml`` and the dataset's files (a text dataset's ``tokenizer.json``), each written atomically."""
    for name, data in files.items():
        write_atomic(run_dir / name, lambda f, data=data: f.write(data))


def holds_run(run_dir: Path) -> bool | None:
    """Whether ``run_dir`` holds a kdkit run: ``True`` (a checkpoint, metrics, TensorBoard events, or a
    ``config.yaml`` that validates as a run config), ``None`` when it holds a ``config.yaml`` that is not
    a run's (the user's own file, never to be replaced), ``False`` otherwise (missing or no such files)."""
    if not run_dir.is_dir():
        return False
    if any((run_dir / n).exists() for n in (*CHECKPOINTS, "metrics.jsonl")) or any(
            run_dir.glob("events.out.tfevents.*")):
        return True
    config = run_dir / "config.yaml"
    if not config.exists():
        return False
    try:
        load_config(config)
    except ConfigError:
        return None
    return True


def remove_run(run_dir: Path) -> list[str]:
    """Delete the files a kdkit run writes in ``run_dir`` (checkpoints, metrics, config, TensorBoard events,
    the default teacher cache, interrupted writes); anything else in the folder stays. Returns the names."""
    removed = []
    for p in sorted(run_dir.iterdir()):
        ours = p.name in (*CHECKPOINTS, "metrics.jsonl", "config.yaml") or p.name.startswith("events.out.tfevents.") \
            or any(p.name.startswith(f".{n}.") and p.name.endswith(".tmp") for n in CHECKPOINTS)
        if ours and (p.is_file() or p.is_symlink()):
            p.unlink()
            removed.append(p.name)
        elif p.name == "teacher_cache" and p.is_dir() and any(p.glob("*/meta.json")):
            shutil.rmtree(p)
            removed.append(p.name)
    return removed


def next_free(run_dir: Path) -> Path:
    """``run_dir`` itself if it holds no run, else the first of ``<run_dir>-2``, ``-3``, ... that holds none."""
    k, path = 1, run_dir
    while holds_run(path) is not False:
        k += 1
        path = run_dir.with_name(f"{run_dir.name}-{k}")
    return path


LOCK = ".kdkit.lock"


class FileLock:
    """``fcntl.flock`` on one file, shared or exclusive, converted in place on the same descriptor. The
    lock goes with the process (a killed run leaves no stale lock). Serves the run directory (one writer)
    and the teacher cache on disk (readers share; a filler is alone)."""

    def __init__(self, path: Path):
        self.path = path
        self.created = not path.exists()  # so that a refused run can leave no file of its own behind
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, exclusive: bool, wait_s: float = 0.0, on_wait: Callable[[], None] | None = None) -> bool:
        """Take (or convert to) the lock; wait up to ``wait_s`` seconds, calling ``on_wait`` once when it
        has to wait. Returns whether the lock is held."""
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline, waited = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(self._fd, mode)
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                time.sleep(0.2)

    def holder(self) -> str:
        """What the holder wrote into the file (:meth:`note`), or "another process"."""
        return os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"

    def note(self, text: str) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode(), 0)

    def release(self, remove: bool = False) -> None:
        """Let go (closing the descriptor releases the lock); ``remove``: delete the file too if this
        process created it (a run refused before it wrote anything)."""
        if self._fd is not None:
            if remove and self.created:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def lock_run(run_dir: Path) -> FileLock:
    """The exclusive lock on a run directory (``.kdkit.lock``), held while a run writes into it: a second
    run or resume of the same directory is refused instead of interleaving its files; the file says who
    holds it."""
    lock = FileLock(run_dir / LOCK)
    if not lock.acquire(exclusive=True):
        holder = lock.holder()
        lock.release()  # not removed: the holder's file
        raise ConfigError(f"{run_dir} is in use by another kdkit run ({holder}); wait for it to end, or choose "
                          "another --out / train.run_name")
    lock.note(f"pid {os.getpid()} on {socket.gethostname()}")
    return lock


def _make_locked(run_dir: Path) -> FileLock:
    make_folder(run_dir, "the run directory", "; choose another --out / train.run_name")
    return lock_run(run_dir)  # one writer per run directory


def claim_run_dir(run_dir: Path, existing: str, log: Callable[[str], None]) -> Path:
    """A new run's directory: refused when it holds another run (or a ``config.yaml`` that is not a run's),
    unless ``existing`` (``train.existing``) says to overwrite that run or to take the next free name,
    which is returned."""
    held = holds_run(run_dir)
    if held is None and existing != "new":
        raise ConfigError(f"{run_dir} holds a config.yaml that is not a kdkit run's; kdkit does not replace it: "
                          "choose another --out / train.run_name")
    if not held:
        return run_dir
    if existing == "new":
        free = next_free(run_dir)
        log(f"{run_dir} holds a run: this one goes to {free}")
        return free
    if existing == "overwrite":
        log(f"overwriting the run in {run_dir} (removed {', '.join(remove_run(run_dir))})")
        return run_dir
    raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, replace it with "
                      "--overwrite, keep it and start another with --new-dir (train.existing: overwrite / new), or "
                      "choose another --out / train.run_name")


def open_run_dir(run_dir: Path, new_run: bool, existing: str, resumed_from: tuple[Path, int, int] | None,
                 log: Callable[[str], None]) -> tuple[Path, FileLock]:
    """Create and lock the run directory before anything is written into it: a new run claims it
    (:func:`claim_run_dir`; refused: the folder is left as it was), a resume checks that its checkpoint
    (``(path, inode, mtime_ns)`` when it was read) was not replaced meanwhile; interrupted checkpoint
    writes are removed. Returns the directory (another one with ``existing: new``) and its held lock."""
    lock = _make_locked(run_dir)
    try:
        if resumed_from is not None:
            path, ino, mtime = resumed_from
            st = path.stat() if path.is_file() else None
            if st is None or (st.st_ino, st.st_mtime_ns) != (ino, mtime):
                raise ConfigError(f"{path} was replaced by another run while this one was starting from it; "
                                  "resume again")
        if new_run:
            try:
                claimed = claim_run_dir(run_dir, existing, log)
            except ConfigError:
                lock.release(remove=True)  # refused: the folder is left as it was
                raise
            if claimed != run_dir:  # existing: new
                lock.release(remove=True)
                run_dir, lock = claimed, _make_locked(claimed)
    except BaseException:
        lock.release()
        raise
    for path in remove_stale_temps(run_dir):
        log(f"removed {path.name}, left by an interrupted checkpoint write")
    return run_dir, lock
