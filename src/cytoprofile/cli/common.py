"""What every ``cytoprofile`` command shares: the app, its console and logging, option types, progress bars."""

from __future__ import annotations

import logging
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperGroup

from .. import __version__
from ..checks import check_choices
from ..vocabulary import (
    AGGREGATE_OPERATIONS,
    NONE_WORDS,
    PLATES_WITHOUT_CONTROLS,
)

__all__ = [
    "COMPARTMENTS_HELP",
    "AddImageFeaturesOpt", "AggregateCompartmentsOpt", "AggregateOperationOpt", "CompartmentFeaturesOpt", "ImageFeaturesOpt", "OutputArg", "ProfilesArg", "SeedOpt", "StrataOpt", "CompartmentsOpt", "ConnectTimeoutOpt", "EndpointOpt",
    "FeaturePrefixOpt", "FeaturesOpt", "FloatFormatOpt", "HubOpt", "NoControlsOpt", "NoSignOpt", "PlateColumnOpt",
    "ProfileOpt", "QuietOpt", "ReadTimeoutOpt", "ReferenceOpt", "RetriesOpt", "TmpDirOpt", "app",
    "check_float_format", "choice_option", "configure_storage", "one_of", "console", "feature_args", "log", "plate_progress",
    "none_or_values", "setup_logging", "split_values", "timed",
]

_PLACEHOLDERS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def one_of(values: typing.Sequence[str]) -> str:
    """The placeholder of an option taking one of ``values``: ``[median|mean]``, so help shows them."""
    return "[" + "|".join(values) + "]"


def choice_option(values: typing.Sequence[str], *names: str, help: str) -> Any:
    """An option taking one of ``values``: shown as ``[a|b]`` and refused, naming the flag and the
    choices, before any input is read (``names``: its flags, when it has more than its own)."""
    def _check(param: typer.CallbackParam, value: str) -> str:
        return check_choices(param.opts[0], [value], values)[0]

    return typer.Option(*names, metavar=one_of(values), help=help, callback=_check)


class _Group(TyperGroup):
    """The command group, with readable help for every command.

    Summaries are the docstring's whole first line (never cut at "..."); options show
    TEXT / NUMBER / INTEGER placeholders (``NAME,...`` when repeatable) instead of
    Python types, arguments their upper-case name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.short_help = command.short_help or (command.help or "").strip().split("\n")[0]
            for param in command.params:
                if param.param_type_name == "argument":
                    _plain_argument(param)
                    continue
                if param.metavar is not None or param.name == "help":
                    continue
                annotation = getattr(param, "type_descriptor", None)
                element = typing.get_args(annotation.annotation) if annotation is not None else ()
                if getattr(param, "multiple", False):  # text lists take commas; numbers are repeated
                    kind = element[0] if element else str
                    param.metavar = _PLACEHOLDERS.get(kind, "TEXT") + (",..." if kind is str else "")
                elif annotation is not None and annotation.annotation in _PLACEHOLDERS:
                    param.metavar = _PLACEHOLDERS[annotation.annotation]


def _plain_argument(param: Any) -> None:
    """``PROFILES`` in the usage line and the argument list (Typer would print ``{profiles} <str>``)."""
    name = param.metavar or str(param.name).upper()
    usage = (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")
    param.metavar = name
    shown = {"display_type_rich": lambda ctx: None, "_usage_display_name": lambda: usage,
             "_rich_display_name": lambda: name + ("..." if param.nargs != 1 else "")}
    for attr, method in shown.items():
        setattr(param, attr, method)


app = typer.Typer(
    name="cytoprofile",
    help="CellProfiler output to analysis-ready Cell Painting profiles.",
    cls=_Group,
    context_settings={"show_default": True},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)

log = logging.getLogger("cytoprofile")

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")]
ProfileOpt = Annotated[str | None, typer.Option(help="AWS profile for S3 URLs.", show_default="the standard credential chain")]
EndpointOpt = Annotated[str | None, typer.Option(help="S3-compatible endpoint URL (e.g. a local or non-AWS server).")]
NoSignOpt = Annotated[bool, typer.Option("--no-sign-request", help="Anonymous access to public buckets (e.g. the Cell Painting Gallery).")]
TmpDirOpt = Annotated[str | None, typer.Option(help="Scratch folder for downloads and temporary files (created if missing).")]
ConnectTimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for a connection to S3 or the Dask scheduler.")]
ReadTimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for an answer from S3 or the Dask scheduler.")]
RetriesOpt = Annotated[int, typer.Option(help="Retries of a failed S3 request (throttling, server errors, timeouts).")]
HubOpt = Annotated[str, typer.Option(help="Compartment (object set, e.g. Cells_Cellpose3) whose Parent_ columns link the others in the joined cells.")]


def configure_storage(profile: str | None, endpoint_url: str | None, no_sign_request: bool, *,
             connect_timeout: float | None = None, read_timeout: float | None = None, retries: int | None = None) -> None:
    from .. import io

    io.configure_storage(io.storage_options(
        profile=profile, endpoint_url=endpoint_url, no_sign_request=no_sign_request,
        connect_timeout=io.DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout,
        read_timeout=io.DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout,
        retries=io.DEFAULT_RETRIES if retries is None else retries))


def split_values(values: list[str] | None) -> list[str] | None:
    """Accept both repeated options and comma-separated lists."""
    if values is None:
        return None
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out


def none_or_values(values: list[str] | None) -> list[str] | None:
    """``split_values``, with ``none`` (or ``null``) naming the empty list (an option not given stays None)."""
    out = split_values(values)
    return [] if out is not None and len(out) == 1 and out[0].lower() in NONE_WORDS else out


def setup_logging(quiet: bool) -> None:
    """One line per record on the console that draws the bars; ``--quiet`` keeps warnings."""
    from ..logs import ConsoleHandler, capture_warnings

    level = logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("cytoprofile")
    root.handlers.clear()
    handler = ConsoleHandler(console)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    capture_warnings()


@contextmanager
def timed(step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    log.info("%s done in %.2fs", step, time.perf_counter() - start)


class _RateColumn(ProgressColumn):
    """Items per second (sites, for collate)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


@contextmanager
def plate_progress(plates: list[str], quiet: bool, unit: str | None = "sites") -> Iterator[Any]:
    """A Rich display with one bar per plate and one overall, fed by (plate, done, total) events.

    ``unit=None``: steps of unequal length (a recipe), so no rate and no time remaining.
    """
    if quiet:
        yield None
        return
    rate = [_RateColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()] if unit else [TimeElapsedColumn()]
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *rate,
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}
    totals: dict[str, int] = {}
    done: dict[str, int] = {}
    overall = progress.add_task(f"all {len(plates)} plates", total=None) if len(plates) > 1 else None

    started = False

    def update(plate: str, n: int, total: int) -> None:
        nonlocal started
        if not started:  # drawn from the first event: a command failing before it prints no empty display
            progress.start()
            started = True
        if plate not in tasks:
            tasks[plate] = progress.add_task(plate, total=total)
        totals[plate] = total
        done[plate] = n
        progress.update(tasks[plate], completed=n, total=total)
        if overall is not None:  # the total is known once every plate is scanned; until then the bar says so
            scanned = "" if len(totals) == len(plates) else f" ({len(totals)} scanned)"
            progress.update(overall, completed=sum(done.values()),
                            total=sum(totals.values()) if not scanned else None,
                            description=f"all {len(plates)} plates{scanned}")

    with _no_control_echo():
        try:
            yield update
        except BaseException:  # the last frame says which bars will not fill, rather than stopping mid-way silently
            for plate, task in tasks.items():
                if done[plate] < totals[plate]:
                    progress.update(task, description=f"{plate} (stopped)")
            if overall is not None:
                progress.update(overall, description=f"all {len(plates)} plates (stopped)")
            raise
        finally:
            if started:
                progress.stop()


@contextmanager
def _no_control_echo() -> Iterator[None]:
    """While bars are drawn, the terminal does not echo ``^C``: the echo would move the
    cursor under the live display, which then redraws its last frame one line off and
    leaves a copy of a bar above the "interrupted" line."""
    import os
    import sys

    try:
        import termios
    except ImportError:  # Windows
        yield
        return
    try:
        fd = sys.stdin.fileno()
    except (OSError, ValueError, AttributeError):  # stdin closed or replaced (pytest)
        yield
        return
    if not os.isatty(fd):  # nohup, cron, a batch job, < /dev/null: no echo to turn off
        yield
        return
    try:
        saved = termios.tcgetattr(fd)
        quiet = list(saved)
        quiet[3] &= ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (OSError, termios.error):  # a terminal that refuses the settings
        yield
        return
    try:
        yield
    finally:
        with suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """CellProfiler output to analysis-ready Cell Painting profiles."""


def check_float_format(value: str | None) -> str | None:
    """The ``--float-format`` check a config's ``options.float_format`` gets (exit 1, one line)."""
    from ..io import check_usable_float_format

    return check_usable_float_format(value)


FloatFormatOpt = Annotated[str | None, typer.Option(help="printf-style float format for CSV output: %.Ng or %.Ne, e.g. %.5g.", show_default="full precision",
                                                    callback=check_float_format)]
#: the help of every option naming the object tables whose columns are features
COMPARTMENTS_HELP = "Object tables whose columns are features (e.g. Cells,Cytoplasm,Nuclei,Speckles)."
CompartmentsOpt = Annotated[list[str] | None, typer.Option(
    help=COMPARTMENTS_HELP, show_default="Cells, Cytoplasm, Nuclei")]
FeaturesOpt = Annotated[list[str] | None, typer.Option(help="Feature columns.", show_default="inferred")]
CompartmentFeaturesOpt = Annotated[list[str] | None, typer.Option(help="Feature columns.", show_default="inferred from the compartments")]
ImageFeaturesOpt = Annotated[bool, typer.Option(help="Include Image_* features when inferring.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed.")]
ProfilesArg = Annotated[str, typer.Argument(help="Per-well profiles.")]
OutputArg = Annotated[str, typer.Argument(help="Output table.")]
# the per-well aggregation collate and aggregate share
AggregateOperationOpt = Annotated[str, typer.Option(
    "--operation", "--method", metavar=one_of(AGGREGATE_OPERATIONS),
    help="median or mean (--method: the recipe's aggregate.method).")]
AggregateCompartmentsOpt = Annotated[list[str], typer.Option(help="Object tables to aggregate.")]
AddImageFeaturesOpt = Annotated[bool, typer.Option("--image-features/--no-image-features", help="Add image features.")]
StrataOpt = Annotated[list[str], typer.Option(help="Columns that define a profile.")]
FeaturePrefixOpt = Annotated[list[str] | None, typer.Option("--feature-prefix", "--feature-prefixes", help="Infer features by these name prefixes (e.g. PC, or a deep-learning model's); default Cells, Cytoplasm, Nuclei.")]
PlateColumnOpt = Annotated[str, typer.Option(help="Column naming the plate.")]
ReferenceOpt = Annotated[str, typer.Option(help="Reference wells for per-plate statistics: all, or a query.")]
NoControlsOpt = Annotated[str, typer.Option(metavar=one_of(PLATES_WITHOUT_CONTROLS), help="Plates without reference wells: error or drop (their wells).")]


def feature_args(features: list[str] | None, feature_prefixes: list[str] | None) -> dict[str, Any]:
    return {"features": split_values(features) or "infer", "feature_prefixes": split_values(feature_prefixes)}
