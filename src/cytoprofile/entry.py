"""The ``cytoprofile`` command and ``python -m cytoprofile``: Ctrl-C handled from the first line.

Importing the CLI loads Typer, Polars, PyArrow and pandas (most of a second). An interrupt
then would surface as a ``KeyboardInterrupt`` traceback from inside some library's import.
This module imports nothing that is not loaded already: it takes SIGINT first, so an interrupt during start-up
ends the process at once with one line and exit status 130 (nothing has started, nothing
needs cleaning up). While a command runs, the CLI's own handling applies (commands remove
their temporary files on ``KeyboardInterrupt``); after it returns, an interrupt during the
interpreter's shut-down again ends the process at once.
"""

import os
import sys

try:  # the interpreter's own signal module, loaded at start-up: ``signal`` would first import enum (~10 ms)
    import _signal as signals
except ImportError:  # pragma: no cover - an interpreter without it
    import signal as signals  # type: ignore[no-redef]

__all__ = ["INTERRUPTED_STATUS", "main"]

#: exit status of an interrupted run (128 + SIGINT, as a shell reports it)
INTERRUPTED_STATUS = 130


def _write(stream: object, text: str) -> None:
    """Write and flush ``text`` (stderr is where the CLI writes its messages); never raise from a signal handler."""
    try:
        stream.write(text)  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]
    except (OSError, ValueError, RuntimeError, AttributeError):
        pass


def _leave(*, say: bool) -> None:
    """End the process now with status 130: flush what the command printed, skip the teardown."""
    _write(sys.stdout, "")
    if say:
        _write(sys.stderr, "interrupted\n")
    os._exit(INTERRUPTED_STATUS)


def _interrupted(signum: int, frame: object) -> None:
    _leave(say=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); exit status as the CLI maps it, 130 when interrupted."""
    previous = signals.getsignal(signals.SIGINT)
    ours = previous is signals.default_int_handler  # an inherited "ignore SIGINT" is respected
    if ours:
        signals.signal(signals.SIGINT, _interrupted)
    from .cli import main as run

    if ours:
        signals.signal(signals.SIGINT, previous)
    try:
        status = run(argv)
    except KeyboardInterrupt:  # between the handler's return and the CLI's own handling
        _write(sys.stderr, "interrupted; re-run the same command to finish the job\n")
        status = INTERRUPTED_STATUS
    if status == INTERRUPTED_STATUS and ours:
        _leave(say=False)  # now: a worker thread still blocked (on a plate lock, a read) would hold up the exit
    if ours:
        signals.signal(signals.SIGINT, _interrupted)
    return status
