"""The executor on a real Dask cluster on loopback: a plate's progress reaches the client as it happens."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from cytoprofile.collate import collate
from cytoprofile.executor import run_plates

from .quarantine import BATCH, quarantined_workspace

PLATES = ["P1", "P2", "P3"]


class _Recorder(logging.Handler):
    """Keeps each plate's warnings and progress events in the one order they were shown."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[str, str, int, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.seen.append((message.split(":", 1)[0], message, -1, -1))

    def progress(self, plate: str, done: int, total: int) -> None:
        self.seen.append((plate, "progress", done, total))


def _collate(ws: Path, **options: object) -> _Recorder:
    recorder = _Recorder()
    logger = logging.getLogger("cytoprofile")
    logger.addHandler(recorder)
    try:
        results = collate(ws, BATCH, PLATES, overwrite=True, progress=recorder.progress, **options)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(recorder)
    assert [r.status for r in results] == ["done"] * len(PLATES), [r.message for r in results]
    return recorder


@pytest.mark.parametrize("wells", [6, 24])
def test_dask_progress_reaches_the_client_before_each_plate_ends(
        tmp_path: Path, wells: int, cluster: tuple[str, list[subprocess.Popen[bytes]]]) -> None:
    ws = tmp_path / "ws"
    expected = quarantined_workspace(ws, PLATES, wells=wells)
    serial = _collate(ws)
    remote = _collate(ws, scheduler=cluster[0])
    sites = 2 * wells  # quarantined sites count as read
    for plate in PLATES:
        events = [(done, total) for p, kind, done, total in remote.seen if p == plate and kind == "progress"]
        assert events[-1] == (sites, sites), events
        assert [d for d, _ in events] == sorted(d for d, _ in events), f"{plate}'s bar went back: {events}"
        first_end = events.index((sites, sites))
        assert [d for d, _ in events[:first_end] if 0 < d < sites], f"{plate}: no progress before its end: {events}"
        # the worker's warnings arrive once each, in the plate's order, before the plate's end
        warnings = [m for p, m, *_ in remote.seen if p == plate and m != "progress"]
        assert warnings == [m for p, m, *_ in serial.seen if p == plate and m != "progress"]
        assert sorted(warnings) == sorted(w for w in expected if w.startswith(f"{plate}:"))
        shown = [m for p, m, *_ in remote.seen if p == plate]
        assert shown.index(warnings[-1]) < len(shown) - 1 - shown[::-1].index("progress")


def _slow_or_broken(task: int, options: dict[str, str], _progress: object) -> int:
    """A plate task: the first one fails at once with a bug, the others take a few seconds and leave a file."""
    if task == 0:
        time.sleep(0.5)
        raise RuntimeError("a bug")
    time.sleep(3)
    (Path(options["out"]) / f"done{task}").write_text("written")
    return task


def test_a_task_that_fails_unexpectedly_stops_the_pool(tmp_path: Path) -> None:
    """A bug in one plate ends the run: no queued plate starts and the running ones end, so no worker goes on
    writing after the command has exited (nor ignores a Ctrl-C meant for it)."""
    with pytest.raises(RuntimeError, match="a bug"):
        run_plates(_slow_or_broken, [0, 1, 2, 3], {"out": str(tmp_path)}, jobs=2)
    time.sleep(6)  # longer than two rounds of the slow plates
    assert sorted(p.name for p in tmp_path.iterdir()) == []



@pytest.mark.parametrize(("kind", "connect", "read"), [("closed", 1.0, 15.0), ("closed", 3.0, 15.0),
                                                      ("silent", 1.0, 1.5)])
def test_connect_timeout_bounds_the_scheduler_connection(tmp_path: Path, kind: str, connect: float, read: float,
                                                        silent_listener: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from cytoprofile import io
    from cytoprofile.cli import main
    from cytoprofile.synth import synth

    from .loopback import closed_port

    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1", "P2"], wells=96, well_subset=2, sites=1, cells=4, features=4)
    address = "tcp://" + (closed_port() if kind == "closed" else silent_listener)
    bound = connect if kind == "closed" else connect + read  # a refused port: the connect timeout alone
    t0 = time.monotonic()
    status = main(["collate", str(ws), "B1", "P1", "P2", "--scheduler", address, "--connect-timeout", f"{connect:g}",
                   "--read-timeout", f"{read:g}", "-q"])
    elapsed = time.monotonic() - t0
    io.configure_storage(None)
    err = capsys.readouterr().err.strip()
    assert status == 1, err
    assert elapsed <= bound + 1.5, (elapsed, err)
    assert len(err.splitlines()) == 1 and address in err and "--scheduler" in err, err
    if kind == "closed":
        assert "refused" in err, err


@pytest.mark.parametrize("jobs", [0, -3, 1.5])
def test_jobs_below_one_are_refused(jobs: float) -> None:
    """``collate --jobs 0`` (or ``-3``) ran one plate at a time without a word."""
    from cytoprofile.errors import InputError
    from cytoprofile.executor import run_plates

    with pytest.raises(InputError, match="--jobs"):
        run_plates(lambda task, options, progress: task, [1, 2], {}, jobs=jobs)  # type: ignore[arg-type]


def _message(key: str, seq: int) -> dict[str, object]:
    return {"key": key, "seq": seq, "name": "cytoprofile.test", "levelno": logging.WARNING,
            "levelname": "WARNING", "msg": f"{key}: warning {seq}", "created": 0.0}


@pytest.mark.parametrize("live", [[2, 0], [1, 3], [3, 2, 1, 0], []])
def test_the_dask_relay_prints_each_task_s_records_once_in_order(live: list[int]) -> None:
    """Live records that arrive out of order, or some never, are printed once each and in the
    task's order: an overtaking record waits for the earlier ones its task's result brings."""
    from cytoprofile.executor import _DaskRelay

    recorder = _Recorder()
    logger = logging.getLogger("cytoprofile")
    logger.addHandler(recorder)
    try:
        relay = _DaskRelay(recorder.progress)
        for seq in live:
            relay.event(_message("P1", seq))
            relay.event(_message("P2", seq))
        relay.finish("P1", "P1", [_message("P1", s) for s in range(4)], None)
        relay.event(_message("P1", 1))  # a late live copy after the result
        relay.flush()
    finally:
        logger.removeHandler(recorder)
    p1 = [m for p, m, *_ in recorder.seen if p == "P1" and m != "progress"]
    assert p1 == [f"P1: warning {s}" for s in range(4)]
    p2 = [m for p, m, *_ in recorder.seen if p == "P2" and m != "progress"]
    assert p2 == [f"P2: warning {s}" for s in sorted(live)]  # a task with no result: flushed at the end, in order
