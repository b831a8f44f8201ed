"""Closing lines, ``error:`` lines and validate-metadata's warnings: wrapped at words on a terminal, one line in a pipe."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import cytoprofile

from .test_annotate import make_platemap, plate_profiles

WIDTH = 80
SRC = Path(cytoprofile.__file__).resolve().parents[1]


def _long_path(depth: int) -> Path:
    """A relative path of about 35 characters a level (one word the terminal must not split)."""
    return Path(*[f"folder_{i:02d}_of_a_deep_workspace" for i in range(depth)], "plates")


def _tmux_screen(tmp_path: Path, command: str) -> list[str]:
    """``command`` run in an 80-column tmux pane: the screen as the terminal shows it."""
    assert shutil.which("tmux"), "tmux not found: .ci/run installs it (apt-get install tmux)"
    sock, conf, script = tmp_path / "tmux.sock", tmp_path / "tmux.conf", tmp_path / "session.sh"
    conf.write_text("set -g history-limit 10000\nset -g status off\n")
    script.write_text(f"export PYTHONPATH={SRC}\n{command}\necho EXIT=$?\nsleep 600\n")
    run = ["tmux", "-S", str(sock)]
    subprocess.run([*run, "-f", str(conf), "new-session", "-d", "-s", "cp", "-x", str(WIDTH), "-y", "40",
                    f"TERM=xterm-256color bash {script}"], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            screen = subprocess.run([*run, "capture-pane", "-p", "-S", "-", "-t", "cp"], capture_output=True,
                                    text=True, timeout=30, check=True).stdout
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
    finally:
        subprocess.run([*run, "kill-server"], capture_output=True, timeout=30)
    lines = [line.rstrip() for line in screen.splitlines()]
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("EXIT="))]


def _assert_wrapped(lines: list[str], lead: str, words: list[str]) -> None:
    """One message over ``lines``: every line fits, the first starts with ``lead``, the rest
    are indented, and each of ``words`` (paths) is whole on one line."""
    assert lines and lines[0].startswith(lead), lines
    assert all(len(line) <= WIDTH or " " not in line.strip() for line in lines), lines  # a word longer than a line
    assert all(line.startswith("  ") for line in lines[1:]), lines
    for word in words:
        assert any(word in line for line in lines), (word, lines)


@pytest.mark.parametrize("where", ["ws", "folder_00_of_a_deep_workspace/plates", "a_workspace/in_a_folder_with_a_longer_name"])
def test_error_line_wraps_at_words_in_tmux_and_is_one_line_in_a_pipe(tmp_path: Path, where: str) -> None:
    command = f"{sys.executable} -m cytoprofile qc {where} B1 P1"
    word = f"{where}/load_data_csv/B1/P1:"  # the path the error names: one word
    lines = [line for line in _tmux_screen(tmp_path, f"cd {tmp_path}\n{command}") if line]
    _assert_wrapped(lines, "error: ", [word])
    assert len(lines) > 1 and " ".join(line.strip() for line in lines).startswith(f"error: {word} no load_data.csv")
    done = subprocess.run(command.split(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 1
    err = done.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {word} no load_data.csv"), done.stderr


@pytest.mark.parametrize(("wide", "depth"), [(True, 0), (True, 1), (False, 1)])
def test_run_closing_lines_wrap_at_words_with_a_hanging_indent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide: bool, depth: int
) -> None:
    from cytoprofile.cli import recipe

    root = _long_path(depth)
    products = [("profiles P1", "profiles/B1/P1/P1_normalized_feature_select_negcon_batch.csv.gz"),
                ("QC report B1", "quality_control/report/B1.html")]
    result = SimpleNamespace(ran=["a"] * 12, skipped=[], outputs=["x"] * 30, seconds=12.5, products=products,
                             root=str(root), qc="QC: ran for B1 (quality control took 25.0s for 3 plates)")
    out = io.StringIO()
    monkeypatch.setattr(recipe, "console", Console(file=out, width=WIDTH, force_terminal=wide, color_system=None))
    recipe._print_products(result)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    paths = [str(root / rel) for _, rel in products]
    if not wide:  # a pipe or a file: one line each
        assert len(lines) == 2 + len(products), lines
        assert [f"{label}: {path}" for (label, _), path in zip(products, paths, strict=True)] == lines[1:-1]
        return
    starts = [i for i, line in enumerate(lines) if not line.startswith("  ")]
    assert len(starts) == 2 + len(products), lines
    for begin, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        _assert_wrapped(lines[begin:end], lines[begin][:3], [])
    for path in paths:  # whole on one line: after its label, or on a line of its own
        assert any(line.strip() == path or line.endswith(" " + path) for line in lines), (path, lines)


@pytest.mark.parametrize("kept", [39, 90])
def test_validate_metadata_warning_is_a_record_on_one_line(tmp_path: Path, kept: int) -> None:
    base = tmp_path / "metadata" / "platemaps" / "B1"
    (base / "platemap").mkdir(parents=True)
    (base / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\nSQ00015167,C-7161-01-LM6-006\n")
    make_platemap().iloc[:kept].to_csv(base / "platemap" / "C-7161-01-LM6-006.txt", sep="\t", index=False)
    profiles_path = tmp_path / "SQ00015167.csv"
    plate_profiles().to_csv(profiles_path, index=False)
    done = subprocess.run([sys.executable, "-m", "cytoprofile", "validate-metadata", str(tmp_path), "B1",
                           "--profiles", str(profiles_path), "--unmatched-wells", "drop"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "annotation drops them" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING  "), done.stderr
    assert f"{96 - kept} well(s)" in warned[0] and "warning:" not in done.stderr, done.stderr


@pytest.mark.parametrize("plates", [["P1"], ["P1", "P2"]])
def test_run_shows_the_quality_control_stage_before_its_closing_lines(tmp_path: Path, plates: list[str]) -> None:
    import logging
    import re

    from cytoprofile.collate import collate
    from cytoprofile.config import config_template
    from cytoprofile.pipeline import run

    from .quarantine import BATCH, quarantined_workspace

    ws = tmp_path / "ws"
    quarantined_workspace(ws, plates, wells=12)
    assert all(r.status == "done" for r in collate(ws, BATCH, plates))
    config = ws / "config.yml"
    text = config_template(workspace=".", batch=BATCH, plates=plates)
    config.write_text(re.sub(r"(?m)^(feature_select:.*\n(?:  .*\n)*?  gct:) false", r"\1 true", text))
    events: list[str] = []

    class _Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append(record.getMessage())

    root = logging.getLogger("cytoprofile")
    handler, level = _Seen(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        result = run(config, jobs=1, progress=lambda _label, done, total: events.append(f"progress {done}/{total}"))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    began = [i for i, e in enumerate(events) if e.startswith(f"quality control: {BATCH}, {len(plates)} plate(s)")]
    ended = [i for i, e in enumerate(events) if re.fullmatch(rf"quality control {BATCH} done in \d+\.\ds", e)]
    assert len(began) == 1 and len(ended) == 1 and began[0] < ended[0], events
    last_plate = max(i for i, e in enumerate(events) if "step(s) run" in e)
    assert last_plate < began[0] and ended[0] < events.index(f"progress {len(plates) + 1}/{len(plates) + 1}"), events
    assert result.qc == f"QC: ran for {BATCH}"
    gct = ws / "gct" / BATCH / f"{BATCH}_normalized_feature_select_batch.gct"
    rows, columns = (int(n) for n in gct.read_text().splitlines()[1].split("\t")[:2])
    said = [e for e in events if e.startswith(f"feature_select_gct {gct.name}: ")]
    assert said == [said[0]] and said[0].startswith(f"feature_select_gct {gct.name}: {rows} features written"), said


@pytest.mark.parametrize("given", ["Metadata_nope", "Metadata_target_typo"])
def test_consistency_map_error_names_the_annotation_option(given: str) -> None:
    import numpy as np
    import pandas as pd

    from cytoprofile.errors import ConfigError
    from cytoprofile.evaluate import mean_average_precision

    rng = np.random.default_rng(0)
    profiles = pd.DataFrame(rng.normal(size=(8, 3)), columns=["Cells_a", "Cells_b", "Cells_c"])
    profiles["Metadata_target"] = ["x", "y"] * 4
    with pytest.raises(ConfigError) as caught:
        mean_average_precision(profiles, mode="consistency", annotation_column=given)
    assert given in str(caught.value) and "annotation_column" in str(caught.value)
    assert "pert_column" not in str(caught.value)


def test_recipe_bar_has_no_rate_nor_time_remaining() -> None:
    from rich.progress import TimeRemainingColumn

    from cytoprofile.cli import common

    with common.plate_progress(["recipe"], False, unit=None) as update:
        update("recipe", 3, 4)
        progress = update.__closure__  # the display the callback feeds
    shown = [cell.cell_contents for cell in progress or () if hasattr(cell.cell_contents, "columns")]
    assert shown, "no progress display"
    columns = shown[0].columns
    assert not any(isinstance(c, (common._RateColumn, TimeRemainingColumn)) for c in columns), columns


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("problems", [2, 7])
def test_a_message_naming_several_problems_keeps_one_line_each(terminal: bool, problems: int) -> None:
    """An error listing several faults (a config's unknown keys, metadata checks) shows each fault on a
    line of its own, in a pipe and on a terminal (wrapped there at words, never run together)."""
    from cytoprofile.logs import print_message

    faults = [f"cfg.yml:{10 + i}: annotate.perfrom{i}: unknown key; did you mean 'perform'? (remove it or fix "
              f"the spelling to use it)" for i in range(problems)]
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=80, color_system=None)
    print_message(console, "\n".join(faults), lead="error: ")
    lines = out.getvalue().splitlines()
    starts = [i for i, line in enumerate(lines) if "cfg.yml:" in line]
    assert len(starts) == problems  # each fault begins a line
    assert [lines[i].lstrip().removeprefix("error: ").split(":")[1] for i in starts] == [str(10 + i) for i in range(problems)]
    if terminal:
        assert all(len(line) <= 80 for line in lines)
        assert " ".join(" ".join(lines).split()) == " ".join(f"error: {' '.join(faults)}".split())
    else:
        assert len(lines) == problems


def test_ctrl_c_under_bars_leaves_one_frame_above_the_interrupted_line(tmp_path: Path) -> None:
    from cytoprofile.synth import synth

    plates = ["PA", "PB", "PC", "PD"]
    synth(tmp_path / "ws", batch="B1", plates=plates, wells=96, sites=3, cells=30, features=20, seed=2)
    sock, script = tmp_path / "tmux.sock", tmp_path / "session.sh"
    (tmp_path / "tmux.conf").write_text("set -g history-limit 10000\nset -g status off\n")
    script.write_text(f"export PYTHONPATH={SRC}\ncd {tmp_path}\n{sys.executable} -m cytoprofile collate ws B1 "
                      f"{' '.join(plates)} --jobs 2\necho EXIT=$?\nsleep 600\n")
    run = ["tmux", "-S", str(sock)]

    def screen() -> list[str]:
        out = subprocess.run([*run, "capture-pane", "-p", "-S", "-", "-t", "cp"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
        return [line.rstrip() for line in out.splitlines() if line.strip()]

    subprocess.run([*run, "-f", str(tmp_path / "tmux.conf"), "new-session", "-d", "-s", "cp", "-x", str(WIDTH),
                    "-y", "40", f"TERM=xterm-256color bash {script}"], check=True, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("PA ") for line in screen()):
            time.sleep(0.2)
        subprocess.run([*run, "send-keys", "-t", "cp", "C-c"], check=True, timeout=30)
        lines = screen()
        while time.monotonic() < deadline and not any(line.startswith("EXIT=") for line in lines):
            time.sleep(0.2)
            lines = screen()
    finally:
        subprocess.run([*run, "kill-server"], capture_output=True, timeout=30)
    assert "EXIT=130" in lines, lines
    lines = lines[: lines.index("EXIT=130")]
    bars = [line.split()[0] for line in lines if "━" in line]
    assert bars and len(bars) == len(set(bars)), lines  # each bar drawn once
    assert lines[-1].startswith("interrupted"), lines


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("level", [logging.WARNING, logging.INFO, logging.ERROR])
def test_record_on_a_terminal_keeps_each_path_whole(tmp_path: Path, depth: int, level: int) -> None:
    from cytoprofile.logs import ConsoleHandler

    out = io.StringIO()
    handler = ConsoleHandler(Console(file=out, force_terminal=True, width=WIDTH, color_system=None))
    path = str(tmp_path / _long_path(depth) / "Image.csv")
    other = str(_long_path(depth) / "Cells.csv")
    record = logging.LogRecord("cytoprofile", level, __file__, 1, "site P1-A01-1 is quarantined: %s is empty "
                               "and %s has no rows; re-run the export", (path, other), None)
    handler.emit(record)
    lines = out.getvalue().rstrip("\n").splitlines()
    assert lines[0].startswith(logging.getLevelName(level)), lines
    assert all(line.startswith(" " * 9) for line in lines[1:]), lines
    assert all(len(line) <= WIDTH or " " not in line.strip() for line in lines), lines
    for word in (path, other):
        assert any(word in line for line in lines), (word, lines)


@pytest.mark.parametrize("stdin", ["devnull", "pipe"])
def test_a_run_without_a_terminal_on_stdin_is_not_a_crash(tmp_path: Path, stdin: str) -> None:
    """nohup, cron, a batch scheduler or ``< /dev/null``: stdin is no terminal, so there is no
    echo to turn off; the command goes on (it crashed, exit 3, on the terminal-settings call)."""
    missing = tmp_path / "config.yml"
    feed = {"stdin": subprocess.DEVNULL} if stdin == "devnull" else {"input": ""}
    done = subprocess.run([sys.executable, "-m", "cytoprofile", "run", str(missing)], **feed,  # type: ignore[call-overload]
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 1, done.stderr
    assert "internal error" not in done.stderr and str(missing) in done.stderr


@pytest.mark.parametrize("plates", [["recipe"], ["P1", "P2"]])
def test_a_failed_run_marks_the_bars_it_leaves_unfilled(monkeypatch: pytest.MonkeyPatch, plates: list[str]) -> None:
    """A command that fails mid-way leaves its last frame saying which bars stopped, not a bar
    frozen part-way as if still at work; a bar that filled is left as it is."""
    from cytoprofile.cli import common

    out = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=out, force_terminal=True, width=100, color_system=None))
    with pytest.raises(RuntimeError), common.plate_progress(plates, False, unit=None) as update:
        update(plates[0], 1, 3)
        if len(plates) > 1:
            update(plates[1], 2, 2)
        raise RuntimeError("a plate failed")
    last = out.getvalue().split("\x1b[2K")[-len(plates) - 1:]  # the final frame's lines
    text = "".join(last)
    assert f"{plates[0]} (stopped)" in text
    if len(plates) > 1:
        assert "P2 (stopped)" not in text and "P2" in text
        assert "all 2 plates (stopped)" in text
