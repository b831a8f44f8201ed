"""What a person sees in a terminal: a 2-job collate and a recipe run in a fixed-size tmux pane.

The screen (``capture-pane``) is read mid-run and at the end: every line is whole (a log
record, a bar, a table row, a closing line), the bars are drawn once at the bottom and
not left between log lines, every warning appears exactly once, and the recipe ends
with its products. tmux is installed by ``.ci/run``.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from rich.console import Console

import cytoprofile
from cytoprofile.config import config_template
from cytoprofile.logs import ConsoleHandler, capture_warnings
from cytoprofile.pipeline import run

from .quarantine import BATCH, quarantined_workspace

PLATES = ["P1", "P2", "P3"]
WIDTH, HEIGHT = 80, 24
LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")
BAR = re.compile(r"^(all \d+ plates(?: \([^)]*\))?|P\d|recipe: plates, then batch steps) +━*[━╸╺ ]* *\d+/(?:\d+|\?)"
                 r"|^(all \d+ plates(?: \([^)]*\))?|P\d|recipe: \S.*) +[━╸╺ ]")
TABLE = re.compile(r"^[┏┃┡│└]|^ +collate B1 *$")
HANGING = " " * 9  # continuation lines of a wrapped record, under its message
CLOSING = re.compile(r"^(\d+ step\(s\) run, |profiles P\d|GCT B1: |QC report B1: |QC: ran for B1$|(COLLATE|RUN)-EXIT=\d+$)")


def _config(ws: Path) -> Path:
    text = config_template(workspace=".", batch=BATCH, plates=PLATES)
    text = re.sub(r"(?m)^(feature_select:.*\n(?:  .*\n)*?  gct:) false", r"\1 true", text)
    text = text.replace("pipeline: profiling", "pipeline: profiling\nreviewer_notes: first pass", 1)
    path = ws / "config.yml"
    path.write_text(text)
    return path


def _tmux(sock: Path, *args: str) -> str:
    out = subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def _screen(sock: Path) -> list[str]:
    """The whole scrollback as the terminal shows it: a line it folded stays folded (no ``-J``)."""
    return [line.rstrip() for line in _tmux(sock, "capture-pane", "-p", "-S", "-", "-t", "cp").splitlines()]


def _records(lines: list[str]) -> list[str]:
    """The screen with each wrapped log record joined back into one line (words rejoined
    with one space, so a word split across lines would not read back whole). A closing
    line's path, one word with no place to wrap, is folded by the terminal at its edge:
    it is joined back as the terminal folded it."""
    out: list[str] = []
    for line in lines:
        continues = out and line.startswith(HANGING) and line[len(HANGING)] != " " and LOG.match(out[-1])
        if continues:
            out[-1] += " " + line.strip()
        elif out and len(out[-1]) == WIDTH and CLOSING.match(out[-1]) and " " not in out[-1].split(": ", 1)[-1]:
            out[-1] += line
        elif out and CLOSING.match(out[-1]) and line.startswith("  ") and line[2:3] not in ("", " "):
            out[-1] += " " + line.strip()  # a closing line wrapped at a word: its path on a line of its own
        else:
            out.append(line)
    return out


def _assert_whole_lines(lines: list[str]) -> None:
    assert all(len(line) <= WIDTH for line in lines)
    for line in _records(lines):
        assert not line or LOG.match(line) or BAR.match(line) or TABLE.match(line) or CLOSING.match(line), \
            f"a broken line on screen: {line!r}\n" + "\n".join(lines)


def _assert_bars_once_at_the_end(section: list[str], names: list[str]) -> None:
    """The bar lines form one block after the last log line, one bar per name."""
    bars = [i for i, line in enumerate(section) if BAR.match(line)]
    logs = [i for i, line in enumerate(section) if LOG.match(line)]
    assert bars and bars == list(range(bars[0], bars[0] + len(bars))), "\n".join(section)
    assert logs and max(i for i in logs if i < bars[0]) == bars[0] - 1, "\n".join(section)
    assert sorted(section[i].split("━")[0].strip() for i in bars) == sorted(names), "\n".join(section)


def test_two_job_collate_and_recipe_in_tmux(tmp_path: Path) -> None:
    assert shutil.which("tmux"), "tmux not found: .ci/run installs it (apt-get install tmux)"
    ws = tmp_path / "ws"
    expected = quarantined_workspace(ws, PLATES, wells=12)
    _config(ws)
    script = tmp_path / "session.sh"
    exe = f"{sys.executable} -m cytoprofile"
    src = Path(cytoprofile.__file__).resolve().parents[1]  # the code under test, also in the pane
    script.write_text(f"export PYTHONPATH={src}\ncd {ws}\n{exe} collate . {BATCH} {' '.join(PLATES)} --jobs 2\necho COLLATE-EXIT=$?\n"
                      f"{exe} run config.yml --jobs 2\necho RUN-EXIT=$?\nsleep 600\n")
    sock = tmp_path / "tmux.sock"
    conf = tmp_path / "tmux.conf"
    conf.write_text("set -g history-limit 100000\nset -g status off\n")
    _tmux(sock, "-f", str(conf), "new-session", "-d", "-s", "cp", "-x", str(WIDTH), "-y", str(HEIGHT),
          f"TERM=xterm-256color bash {script}")
    try:
        mid: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lines = _screen(sock)
            text = "\n".join(lines)
            if not mid and "━" in text and "RUN-EXIT" not in text:
                mid = lines
            if "RUN-EXIT=" in text:
                break
            time.sleep(0.2)
        final = _screen(sock)
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, timeout=30)
    while final and not final[-1]:
        final.pop()
    _assert_whole_lines(mid)
    _assert_whole_lines(final)
    assert any(line.startswith(HANGING) for line in final), "no record long enough to wrap:\n" + "\n".join(final)
    mid, final = _records(mid), _records(final)
    text = "\n".join(final)
    assert "COLLATE-EXIT=0" in final and final[-1] == "RUN-EXIT=0", text
    assert mid, "no progress bar seen while running"
    split = final.index("COLLATE-EXIT=0")
    collate_part, run_part = final[:split], final[split + 1:]
    for warning in expected:
        assert final.count(f"WARNING  {warning}") == 1, (warning, text)
    collate_warnings = [line for line in collate_part if line.startswith("WARNING")]
    assert sorted(collate_warnings) == sorted(f"WARNING  {w}" for w in expected), text
    _assert_bars_once_at_the_end(collate_part, ["all 3 plates", *PLATES])
    _assert_bars_once_at_the_end(run_part, ["recipe: plates, then batch steps"])
    unknown = [line for line in run_part if "reviewer_notes" in line]
    assert len(unknown) == 1 and unknown[0].startswith("WARNING ") and "unknown key" in unknown[0], text
    for plate in PLATES:
        assert sum(line.startswith(f"INFO     {plate}: ") and "step(s) run" in line for line in run_part) == 1, text
        assert f"profiles {plate}: profiles/{BATCH}/{plate}/{plate}_normalized_feature_select_batch.csv.gz" in run_part, text
    assert f"GCT {BATCH}: gct/{BATCH}/{BATCH}_normalized_feature_select_batch.gct" in run_part, text
    assert f"QC report {BATCH}: quality_control/report/{BATCH}.html" in run_part, text
    assert f"QC: ran for {BATCH}" in run_part, text


@pytest.mark.parametrize("width", [40, 80, 200])
def test_records_and_warnings_are_one_line_at_any_width(width: int) -> None:
    out = io.StringIO()
    logger = logging.getLogger("cytoprofile.test_terminal")
    handler = ConsoleHandler(Console(file=out, width=width, force_terminal=False))
    root = logging.getLogger("cytoprofile")
    saved = root.handlers[:], root.level, root.propagate
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        logger.warning("P1: site P1-A01-1 quarantined: %s", "Nuclei.csv is empty (0 bytes) " * 4)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            capture_warnings()
            warnings.warn("config.yml:12: aggregate.metod: unknown key, ignored " + "x" * 60, UserWarning, stacklevel=1)
    finally:
        root.handlers[:], level, root.propagate = saved
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("WARNING  P1: site P1-A01-1 quarantined: Nuclei.csv"), lines
    assert lines[1].startswith("WARNING  UserWarning: config.yml:12: aggregate.metod: unknown key, ignored xxx"), lines
    assert "warnings.warn(" not in out.getvalue()  # no Python source line


def test_run_reports_each_plate_as_it_finishes(tmp_path: Path) -> None:
    from cytoprofile.collate import collate

    ws = tmp_path / "ws"
    quarantined_workspace(ws, PLATES, wells=12)
    assert all(r.status == "done" for r in collate(ws, BATCH, PLATES))
    events: list[str] = []

    class _Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append(record.getMessage())

    root = logging.getLogger("cytoprofile")
    handler = _Seen()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        result = run(_config(ws), jobs=1, progress=lambda _label, done, total: events.append(f"progress {done}/{total}"))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    ticks = [i for i, e in enumerate(events) if e.startswith("progress")]
    assert [events[i] for i in ticks] == ["progress 0/4", "progress 1/4", "progress 2/4", "progress 3/4", "progress 4/4"], events
    for n, plate in enumerate(PLATES):
        line = next(i for i, e in enumerate(events) if e.startswith(f"{plate}: ") and "step(s) run" in e)
        assert ticks[n + 1] == line + 1, events  # the bar moves as each plate finishes, not at the end
    assert ticks[0] < min(i for i, e in enumerate(events) if "step(s) run" in e)  # shown before any plate is done
    assert not any(e.startswith("feature_select") for e in events[:ticks[3]]), events
    steps = [e for e in events if e.split(" ", 1)[0] in {"annotate", "normalize", "normalize_negcon"}]
    for plate in PLATES:  # one line per step and plate, naming the plate
        for step in ("annotate", "normalize", "normalize_negcon"):
            said = [e for e in steps if e.startswith(f"{step} {plate}") and "features" in e and "→" in e]
            assert len(said) == 1, (step, plate, steps)
    assert all(any(p in e for p in PLATES) for e in steps), steps
    for line in (e for e in events if e.startswith("feature_select")):
        assert "(feature_select:" not in line and ", feature_select:" not in line, line
    labels = [label for label, _ in result.products]
    assert labels == ["profiles P1", "profiles P1 (negcon)", "profiles P2", "profiles P2 (negcon)",
                      "profiles P3", "profiles P3 (negcon)", "GCT B1", "QC report B1"], result.products
    assert all((ws / path).is_file() for _, path in result.products), result.products
    assert result.qc == "QC: ran for B1"


@pytest.mark.parametrize("width", [40, 80, 160])
def test_records_wrap_at_words_with_a_hanging_indent_on_a_terminal(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    logger = logging.getLogger("cytoprofile.test_terminal.wrap")
    logger.addHandler(ConsoleHandler(console))
    logger.propagate, logger.level = False, logging.INFO
    message = ("P2: feature_select variance_threshold dropped 12 features; site P2-B05-3 quarantined: "
               "Image.csv has a header but no data row " * 2).strip()
    try:
        logger.warning(message)
    finally:
        logger.handlers.clear()
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert all(len(line) <= width for line in lines), lines
    assert lines[0].startswith("WARNING  ") and all(line.startswith(HANGING) for line in lines[1:]), lines
    assert len(lines) > 1
    assert _records(lines) == [f"WARNING  {message}"], lines


@pytest.mark.parametrize("jobs", [-1, 0, True])
def test_a_wrong_jobs_number_is_refused_before_any_bar(tmp_path: Path, jobs: object) -> None:
    """``run --jobs -1``: the error comes alone, with no bar frame drawn before it."""
    from cytoprofile.collate import collate
    from cytoprofile.errors import InputError

    ws = tmp_path / "ws"
    quarantined_workspace(ws, PLATES, wells=6)
    assert all(r.status == "done" for r in collate(ws, BATCH, PLATES))
    events: list[tuple[int, int]] = []
    with pytest.raises(InputError, match="jobs must be a whole number"):
        run(_config(ws), jobs=jobs, progress=lambda _label, done, total: events.append((done, total)))  # type: ignore[arg-type]
    assert events == []
