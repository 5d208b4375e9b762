import _signal  # the C module behind `signal`, loaded by Python at start-up: installing the handler costs no import
import os
import sys


def _leave_now(signum, frame):  # Ctrl-C before the command line is even imported: leave at once, one line
    print("kdkit: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


# SIGINT ignored from the start (a background job of a script, `kdkit train ... &`): left ignored, as Python
# itself leaves it, so that the terminal's Ctrl-C meant for the script does not stop this job
if _signal.getsignal(_signal.SIGINT) is not _signal.SIG_IGN:
    _signal.signal(_signal.SIGINT, _leave_now)

from .cli import entry  # noqa: E402  (after the handler: an interrupt while importing leaves cleanly)

entry()
