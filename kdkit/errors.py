"""Exceptions raised by kdkit. The CLI turns any :class:`KdkitError` into a one-line message."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's run over many lines), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _kept(checkpoint: bool) -> str:
    return "the last good checkpoint is kept" if checkpoint else "no checkpoint had been written yet"


WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"


class KdkitError(Exception):
    """Base class of every error kdkit reports to a user. ``exit_code`` is the CLI's exit status.

    An error raised in a ``DataLoader`` worker (an image that cannot be decoded) reaches the main process
    as ``type(message)`` with the worker's whole traceback in the message; such a message is cut back to
    the error's own line, so that the user sees that line and nothing of the worker."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str) and WORKER_TRACEBACK in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            head = f"{type(self).__module__}.{type(self).__qualname__}: "
            args = (last[len(head):] if last.startswith(head) else last.partition(": ")[2] or last, *args[1:])
        super().__init__(*args)


class ConfigError(KdkitError, ValueError):
    """A configuration value, key or name is invalid."""


class RegistryError(ConfigError, KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class LayerPathError(ConfigError, KeyError):
    """A module path that does not exist in a model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetError(KdkitError):
    """A dataset is missing, truncated, malformed or fails its checksum."""

    exit_code = 3


class CheckpointError(KdkitError):
    """A checkpoint is not a kdkit checkpoint, or does not match the model it is loaded into."""

    exit_code = 4


class NonFiniteLossError(KdkitError):
    """A loss term became NaN or infinite; training stopped and the last good checkpoint was kept."""

    exit_code = 5

    def __init__(self, term: str, value: float, epoch: int, step: int, checkpoint: bool = True):
        self.term, self.value, self.epoch, self.step = term, value, epoch, step
        super().__init__(
            f"loss term '{term}' became {value} at epoch {epoch + 1}, step {step}; training stopped, "
            f"{_kept(checkpoint)} (try a lower learning rate or loss weight)"
        )


class DivergedError(KdkitError):
    """After an epoch, the weights or the epoch's metrics are not finite: nothing of that epoch is written."""

    exit_code = 5

    def __init__(self, what: str, epoch: int, checkpoint: bool):
        super().__init__(f"after epoch {epoch}, {what}: training stopped before saving that epoch, {_kept(checkpoint)} "
                         "(try a lower learning rate, grad_clip or loss weight)")


class OutputError(KdkitError):
    """A file could not be written (a full disk, no permission); what was there before is kept."""

    exit_code = 6
