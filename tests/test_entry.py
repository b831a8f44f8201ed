"""The command's entry point: Ctrl-C at any moment is one line and exit status 130, never a traceback."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import faults

ROOT = Path(__file__).resolve().parents[1]
#: from start-up (the CLI's heavy imports) to a command waiting for a plate another process holds
DELAYS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0]
#: a frame of the package's own code (its empty ``__init__`` aside): the entry point has started
_OURS = re.compile(r'File "[^"]*/cytoprofile/(?!__init__\.py")[^"]*"')


def _console_script(tmp_path: Path) -> Path:
    """The ``cytoprofile`` launcher pip writes for the entry point pyproject.toml declares."""
    declared = re.search(r'^cytoprofile = "([\w.]+):(\w+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared, "pyproject.toml declares the cytoprofile command"
    module, function = declared.groups()
    script = tmp_path / "cytoprofile-script"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                      "if __name__ == '__main__':\n    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n"
                      f"    sys.exit({function}())\n")
    script.chmod(0o755)
    return script


@pytest.fixture
def held_plate(tmp_path: Path) -> Iterator[Path]:
    """A workspace whose plate another process is collating (its lock held), so ``collate --wait`` waits."""
    faults.small_plate(tmp_path, wells=1, sites=1)
    lock = tmp_path / "backend" / faults.BATCH / f".{faults.PLATE}.lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield tmp_path
    os.close(fd)


def _interrupt(cmd: list[str], delay: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, (out + err).decode(errors="replace")


def _before_cytoprofile(status: int, text: str) -> bool:
    """Interrupted in the interpreter's own start-up, before the package's first line (CPython's, out of its
    reach): killed by the signal with nothing said, or a traceback through no file of the package."""
    if status == -signal.SIGINT and not text.strip():
        return True
    return "Traceback" in text and not _OURS.search(text)


@pytest.mark.parametrize("delay", DELAYS)
@pytest.mark.parametrize("how", ["python -m cytoprofile", "console script"])
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(held_plate: Path, tmp_path: Path, how: str, delay: float) -> None:
    launcher = [sys.executable, "-m", "cytoprofile"] if how.startswith("python") else [str(_console_script(tmp_path))]
    cmd = [*launcher, "collate", str(held_plate), faults.BATCH, faults.PLATE, "--wait", "-q"]
    for _ in range(3):
        status, text = _interrupt(cmd, delay)
        if not _before_cytoprofile(status, text):
            break
        delay += 0.05  # the interpreter was still starting (a loaded machine): a little later
    else:
        pytest.fail(f"never got past the interpreter's start-up: {text}")
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert status == 130, text
    assert len(lines) == 1 and lines[0].startswith("interrupted"), text


def test_entry_point_runs_the_cli(tmp_path: Path) -> None:
    """Both launchers reach the CLI with their arguments and return its status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for launcher in ([sys.executable, "-m", "cytoprofile"], [str(_console_script(tmp_path))]):
        done = subprocess.run([*launcher, "--version"], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0 and "0.1.0" in done.stdout, done.stdout + done.stderr
        done = subprocess.run([*launcher, "collate", str(tmp_path / "nowhere"), "B", "P"], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 1 and "error:" in done.stderr and "not found" in done.stderr, done.stderr
