"""Shared by the benchmark scripts: timing subprocesses, and writing bench/RESULTS.md.

Each script owns one marked section of RESULTS.md and replaces only that section.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
_HEADER = ("# Benchmark results\n\nWritten by `bench/collate.py`, `bench/recipe.py` and `bench/scale.py`; each "
           "replaces only its own section. Ratios are always measured within one run (this machine is shared and noisy).\n")


@dataclass
class Run:
    """One subprocess run: wall seconds and peak resident memory (bytes)."""

    seconds: float
    max_rss: int
    cpu: float = 0.0  #: user + system CPU seconds of it and its children (less sensitive to a loaded machine)


@dataclass
class Contender:
    """Runs of one contender; a run may be several steps (the old path), timed apart."""

    name: str
    runs: list[Run] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)

    @property
    def best(self) -> float:
        """Fastest run, seconds."""
        return min(r.seconds for r in self.runs)

    @property
    def peak(self) -> int:
        """Largest peak RSS over the runs, bytes."""
        return max(r.max_rss for r in self.runs)


#: run from a fresh, small interpreter (no site packages): it starts the command and reports the command's
#: wall time, CPU and peak RSS. Linux carries a process's peak RSS over ``exec``, so a command started
#: straight from a benchmark script (fork, or vfork sharing its memory) would report the script's own
#: RSS as its peak when that is larger; started from here, the floor is this launcher's few MB.
_LAUNCHER = """
import json, os, sys, time
stats, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
scale = 1 if sys.platform == "darwin" else 1024
with open(stats, "w") as fh:
    json.dump({"seconds": seconds, "max_rss": usage.ru_maxrss * scale, "cpu": usage.ru_utime + usage.ru_stime}, fh)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` (output to ``log``) from a fresh small launcher interpreter; its wall time, CPU and
    the peak RSS of it and its children come from the launcher's ``wait4``, so no benchmark's own
    memory is counted in a contender's peak."""
    import json
    import tempfile

    with tempfile.NamedTemporaryFile(prefix=".measure-", suffix=".json", dir=BENCH, delete=False) as fh:
        stats = Path(fh.name)
    try:
        with open(log, "ab") as out:
            out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
            out.flush()
            code = subprocess.call([sys.executable, "-I", "-S", "-c", _LAUNCHER, str(stats), *map(str, cmd)],
                                   stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        got = json.loads(stats.read_text()) if stats.stat().st_size else None
    finally:
        stats.unlink(missing_ok=True)
    if code != 0 or got is None:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({code}); see {log}:\n" + "\n".join(tail))
    return Run(got["seconds"], int(got["max_rss"]), got["cpu"])


def warm(paths: Sequence[Path]) -> None:
    """Read every file once so that every contender starts from the page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def machine(*packages: str) -> dict[str, str]:
    """The commit under test, the date, this machine's cores and CPU, the Python version and
    the installed version of each of ``packages``."""
    import datetime as dt
    import importlib.metadata as md
    import platform

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")] if cpuinfo.exists() else []
    return {"source": source_state(), "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "cores": str(os.cpu_count()),
            "cpu": names[0] if names else platform.machine(), "python": platform.python_version(),
            **{name: version(name) for name in packages}}


def cytoprofile_bin() -> str:
    """The ``cytoprofile`` command of the running interpreter's environment."""
    here = Path(sys.executable).parent / "cytoprofile"
    return str(here) if here.exists() else shutil.which("cytoprofile") or "cytoprofile"


def generator_version() -> str:
    """Digest of the synthetic-data generator's source: a changed generator means new data."""
    import hashlib
    import inspect

    import cytoprofile.synth

    return hashlib.sha256(inspect.getsource(cytoprofile.synth).encode()).hexdigest()[:12]


def synth_once(ws: Path, *, batch: str, plate: str, wells: int, sites: int, cells: int, features: int,
               well_subset: int | None = None) -> tuple[dict[str, Any], bool]:
    """Synthesise one plate into ``ws`` unless a plate of the same shape (and generator) is there.

    Returns the plate's description (kept in ``ws/synth.json``; callers may add to it
    with :func:`save_info`) and whether it was made now.
    """
    import json

    params = {"wells": wells, "sites": sites, "cells": cells, "features": features, "well_subset": well_subset,
              "batch": batch, "plate": plate, "generator": generator_version()}
    stamp = ws / "synth.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("params") == params:
        return json.loads(stamp.read_text()), False
    shutil.rmtree(ws, ignore_errors=True)
    from cytoprofile.synth import synth

    result = synth(ws, batch=batch, plates=[plate], wells=wells, sites=sites, cells=cells, features=features,
                   well_subset=well_subset, seed=0)
    files = sorted((ws / "analysis" / batch / plate / "analysis").glob("*/*.csv"))
    info = {"params": params, "sites": len(result.wells) * sites, "wells": len(result.wells), "cells": result.cells_written,
            "files": len(files), "csv_bytes": sum(f.stat().st_size for f in files)}
    save_info(ws, info)
    return info, True


def save_info(ws: Path, info: dict[str, Any]) -> None:
    """Rewrite a synthesised plate's ``synth.json``."""
    import json

    (ws / "synth.json").write_text(json.dumps(info, indent=1))


def mb(n: float) -> str:
    """Bytes as MB (10^6)."""
    return f"{n / 1e6:,.0f} MB"


def verdict_at_least(actual: float, target: float) -> str:
    """'met' or 'missed by X' for a ≥ target."""
    if actual >= target:
        return f"**met** ({actual:.1f}× ≥ {target:g}×)"
    return f"**missed** ({actual:.1f}× < {target:g}×; needs {target / actual:.2f}× more speed)"


def verdict_at_most(actual: float, target: float) -> str:
    """'met' or 'missed by X' for a ≤ target."""
    if actual <= target:
        return f"**met** ({actual:.2f}× ≤ {target:g}×)"
    return f"**missed** ({actual:.2f}× > {target:g}×; {actual / target:.2f}× over)"


def runs_text(c: Contender) -> str:
    """Every run's seconds, to show the noise."""
    return ", ".join(f"{r.seconds:.2f}" for r in c.runs)


def source_state() -> str:
    """The commit under test, marked ``+local changes`` when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, check=True, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=BENCH.parent, check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" + local changes under src/" if dirty else "")


def write_section(name: str, body: str) -> None:
    """Replace the ``<!-- name -->`` … ``<!-- /name -->`` section of RESULTS.md, keeping the rest."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = RESULTS.read_text() if RESULTS.exists() else _HEADER
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
