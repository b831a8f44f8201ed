"""The ``cytoprofile`` command: one subcommand per library function, load → call → write.

User errors (``CytoprofileError``) print one line and exit 1; anything else is a
bug: exit 3, with the traceback written to a log file whose path is printed.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import traceback

from .. import __version__
from ..errors import CytoprofileError
from .common import app, console

__all__ = ["app", "console", "main"]

# each module registers its commands on ``app``; help lists them in this order
for _module in ("handbook", "steps", "recipe", "processing", "single_cells"):
    importlib.import_module(f".{_module}", __name__)


def _click_exit(exc: BaseException) -> int | None:
    """Exit status for the CLI framework's own exceptions (usage errors, --help, aborts).

    Matched by shape, not class: Typer may carry its own copy of Click.
    """
    name = type(exc).__name__
    if name == "Exit":
        return int(getattr(exc, "exit_code", 0) or 0)
    if name == "Abort" and isinstance(exc.__cause__, EOFError):
        return None  # Click turns an EOFError from our code into Abort: a bug, not an interrupt
    if name == "Abort":
        console.print("interrupted; re-run the same command to finish the job")
        return 130
    if hasattr(exc, "show") and hasattr(exc, "exit_code"):
        exc.show()
        return int(exc.exit_code)
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map errors to exit codes (1 user error, 2 usage, 3 bug, 130 interrupt)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = app(args=args or ["--help"], standalone_mode=False)
    except CytoprofileError as exc:
        from ..logs import print_message

        print_message(console, str(exc), lead="error: ", style="red")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted; re-run the same command to finish the job")
        return 130
    except Exception as exc:
        code = _click_exit(exc)
        if code is not None:
            return code
        fd, path = tempfile.mkstemp(prefix="cytoprofile-crash-", suffix=".log")
        with open(fd, "w") as fh:
            fh.write(f"cytoprofile {__version__}\nargv: {sys.argv}\n\n")
            fh.write(traceback.format_exc())
        console.print(f"internal error (a bug in cytoprofile): {exc!r}; traceback written to {path}",
                      markup=False, highlight=False, soft_wrap=True)
        return 3
    if isinstance(status, int) and status != 0:
        if status == 130:
            console.print("interrupted; re-run the same command to finish the job")
        return status
    return 0
