"""Command line: parse, build, run. Every command is also reachable from Python (see README).

``parser.py`` holds the arguments, ``commands.py`` what each command does, ``interrupt.py`` the handling
of Ctrl-C; this module runs one command and turns any :class:`~kdkit.errors.KdkitError` into one line on
stderr and its exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..errors import ConfigError, KdkitError
from .interrupt import INTERRUPTED, interruptible, leave_now, start_work
from .parser import build_parser

__all__ = ["INTERRUPTED", "build_parser", "entry", "interruptible", "load_plugin", "main", "start_work"]


def load_plugin(name: str) -> None:
    """``--plugin``: import a Python file (``path/to/file.py``) or a module by name; its top-level code
    registers what it adds (``@register_method`` and the like) and its classes may be named by
    checkpoints (:func:`kdkit.models.external.load_plugin`)."""
    from ..models.external import load_plugin as load

    try:
        load(name)
    except KdkitError:
        raise
    except Exception as e:  # the plugin's own error: say which plugin, keep the message
        raise ConfigError(f"--plugin {name}: {type(e).__name__}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


def entry() -> None:
    """The ``kdkit`` command (and ``python -m kdkit``): Ctrl-C leaves at once until work that writes
    files begins (:func:`interruptible`), then stops it cleanly; exit code 130 and one line either way.
    A process started with SIGINT ignored keeps ignoring it."""
    import os
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored from the start (a script's background job)
        signal.signal(signal.SIGINT, leave_now)  # stays ignored, as Python leaves it
    code = main()
    # interrupted: leave without the interpreter's clean-up of half-used extensions. Under torchrun too:
    # gloo's threads can race the interpreter's teardown after the process group is destroyed ("terminate
    # called without an active exception": 3 aborts in about 12 runs on a loaded machine); every
    # file is written and closed by now, so nothing is lost by skipping that teardown
    if code == 130 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _warning_line(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> str:
    return f"kdkit: warning: {message}\n"


def _main(argv: Sequence[str] | None) -> int:
    import warnings

    warnings.formatwarning = _warning_line  # one line each, as errors are (not the file and line that warned)
    args = build_parser().parse_args(argv)
    try:
        for plugin in args.plugin:
            load_plugin(plugin)
        from .commands import COMMANDS

        return COMMANDS[args.command](args)
    except KdkitError as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"kdkit: error: {message}", file=sys.stderr)  # one line, whatever the error
        return e.exit_code
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        # a write outside kdkit's atomic writers (TensorBoard, a library's file): files already written are kept
        print(f"kdkit: error: cannot write {e.filename or 'a file'} ({e.strerror}; is the disk full?); files "
              "already written are kept (a stopped run continues with --resume RUN_DIR)", file=sys.stderr)
        return 6
