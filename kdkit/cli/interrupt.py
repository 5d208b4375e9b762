"""Ctrl-C from the first instant: while kdkit starts (imports, data, models) it leaves at once; once work
that writes files begins, it stops that work cleanly between writes. Exit code 130 and one line either way."""

from __future__ import annotations

import sys

INTERRUPTED = ("kdkit: interrupted; files already written are kept (a stopped run continues with "
               "--resume RUN_DIR)")


def leave_now(signum: int, frame: object) -> None:
    """Ctrl-C while kdkit starts (imports, data, models): nothing is being written yet, so leave at once.
    An interrupt raised inside an import (torch's C++ initialisation calls back into Python) would leave
    extension modules half set up: a traceback, or an abort at interpreter exit, instead of exit 130."""
    import os

    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(130)


def interruptible() -> None:
    """From here on, Ctrl-C raises KeyboardInterrupt (training stops cleanly between writes)."""
    import signal

    if signal.getsignal(signal.SIGINT) is leave_now:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def start_work() -> None:
    """Commands that run several trainings (pipeline, specialists, demo): finish the slow imports while
    Ctrl-C still leaves at once, then make it interruptible."""
    import importlib

    for name in ("torch", "kdkit.build", "sklearn.datasets"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    interruptible()
