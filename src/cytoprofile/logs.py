"""Where log records go: one line each on the console, from this process or from workers.

Plate tasks run in worker processes or on Dask workers; their records are sent back
to the process that draws the progress display and printed there, above the bars,
so that a warning is never lost in a worker's log nor garbled by a bar redraw.
``warnings.warn`` (ours or a library's) becomes a one-line record too, never a
Python source line.
"""

from __future__ import annotations

import logging
import logging.handlers
import warnings
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = ["LOGGER", "ConsoleHandler", "capture_warnings", "forward_records", "prepared", "print_message", "replay"]

LOGGER = "cytoprofile"
_STYLES = {"DEBUG": "dim", "INFO": "blue", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}


class ConsoleHandler(logging.Handler):
    """Print each record (``LEVEL    message``) on a Rich console.

    On a terminal the message is wrapped at word boundaries to the console's width,
    continuation lines indented under the message, so the terminal never folds a word;
    a pipe or a log file gets each record whole on one line. Printed through the
    console that draws the progress bars, it goes above them.
    """

    def __init__(self, console: Console, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = " ".join(self.format(record).splitlines())
            level = Text(f"{record.levelname:<8}", style=_STYLES.get(record.levelname, ""))
            if self.console.is_terminal:
                self.console.print(_hanging(level, message, self.console.width), soft_wrap=True, highlight=False,
                                   markup=False, emoji=False)
            else:
                line = Text.assemble(level, " ", message)
                self.console.print(line, soft_wrap=True, highlight=False, markup=False, emoji=False)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def print_message(console: Console, message: str, *, lead: str = "", style: str = "", indent: int = 2) -> None:
    """Print ``lead`` + ``message`` (``lead`` in ``style``, e.g. a red ``error:``) as one message.

    Each line of ``message`` (a message naming several problems has one per line) stays
    a line of its own, the later ones indented by ``indent``. On a terminal each is
    wrapped at spaces to the console's width, continuation lines indented further; a
    word (a path) is never split: one too long for the line goes on a line of its own.
    A pipe or a file gets each line whole.
    """
    import textwrap

    parts = [" ".join(p.split()) for p in f"{lead}{message}".splitlines() if p.strip()] or [lead.rstrip()]
    shown = []
    for i, part in enumerate(parts):
        first = "" if i == 0 else " " * indent
        if console.is_terminal:
            part = textwrap.fill(part, width=max(20, console.width), initial_indent=first,
                                 subsequent_indent=first + " " * indent, break_long_words=False,
                                 break_on_hyphens=False)
        else:
            part = first + part
        shown.append(part)
    text = "\n".join(shown)
    line = Text(text)
    if lead and style:
        line.stylize(style, 0, len(lead.rstrip()))
    console.print(line, soft_wrap=True, highlight=False, markup=False, emoji=False)


def _hanging(level: Text, message: str, width: int) -> Text:
    """The level, then the message wrapped at spaces with a hanging indent; a word (a path)
    is never split: one too long for the line goes on a line of its own."""
    import textwrap

    indent = " " * (len(level) + 1)
    body = textwrap.fill(message, width=max(20, width), initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)
    return Text.assemble(level, " ", body[len(indent):])


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: a one-line ``cytoprofile.warnings`` record."""
    text = " ".join(str(message).split())
    where = filename.rsplit("/", 1)[-1]
    logging.getLogger(f"{LOGGER}.warnings").warning("%s: %s (%s:%d)", category.__name__, text, where, lineno)


def capture_warnings() -> None:
    """Show ``warnings.warn`` as one log line each (no source line), once per place."""
    warnings.showwarning = _show_warning


def forward_records(sink: logging.Handler, level: int) -> None:
    """In a worker: send every ``cytoprofile`` record at ``level`` or above to ``sink``
    (a ``QueueHandler`` or a Dask forwarder) instead of printing it here."""
    root = logging.getLogger(LOGGER)
    root.handlers.clear()
    root.addHandler(sink)
    root.setLevel(level)
    root.propagate = False
    capture_warnings()


def replay(record: logging.LogRecord) -> None:
    """Emit a worker's record through this process's handlers (level and format included)."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def prepared(record: logging.LogRecord) -> logging.LogRecord:
    """A copy safe to pickle: message formatted, arguments and traceback folded in."""
    return logging.handlers.QueueHandler(None).prepare(record)  # type: ignore[arg-type]
