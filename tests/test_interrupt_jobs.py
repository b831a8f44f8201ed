"""Ctrl-C during a parallel collate: one line, exit 130, no worker traceback, no plate started after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cytoprofile.synth import synth

ROOT = Path(__file__).resolve().parents[1]


def _started(backend: Path, plates: list[str]) -> list[str]:
    """Plates collate has begun: their lock or their folder exists."""
    return [p for p in plates if (backend / f".{p}.lock").exists() or (backend / p).exists()]


@pytest.mark.parametrize(("plates", "jobs"), [(["PA", "PB", "PC"], 2), (["PA", "PB", "PC", "PD"], 3)])
def test_ctrl_c_with_jobs_stops_workers_quietly(tmp_path: Path, plates: list[str], jobs: int) -> None:
    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=plates, wells=96, sites=3, cells=30, features=20, seed=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "cytoprofile", "collate", str(ws), "B1", *plates, "--jobs", str(jobs)]
    # a terminal's Ctrl-C goes to the whole foreground process group: the workers get it too
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    backend = ws / "backend" / "B1"
    deadline = time.monotonic() + 120
    while len(_started(backend, plates)) < jobs and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # the workers are inside their plates
    started = _started(backend, plates)
    assert proc.poll() is None and len(started) == jobs, "the plates did not start in time"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    text = (out + err).decode(errors="replace")
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Process SpawnProcess" not in text, text
    assert [line for line in err.decode().splitlines() if line.startswith("interrupted")], text
    time.sleep(1.0)  # a plate the pool still started would show up now
    for plate in plates:
        if plate not in started:
            assert not (backend / plate).exists() and not (backend / f".{plate}.lock").exists(), plate
        assert not (backend / plate / f"{plate}.report.json").exists(), plate
