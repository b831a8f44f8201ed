"""Backend speed against a reference commit: is ``collate`` still within 10% of it?

What: one synthetic plate (``cytoprofile synth``) is collated into the SQLite backend
and per-well profiles by two source trees, alternately, in the same run on the same
machine: the current tree (this repository's ``src/``) and a reference commit
(default ``cf39918``, the commit the ingest work started from), checked out as a git
worktree in a temporary folder (reused on later runs). Both run under this Python
and its installed dependencies, each with ``PYTHONPATH`` pointing at its tree's
``src/``; the script checks that each process imports its own tree.

Why: the ingest rules (every row accounted for) must not cost more than 10% of the
backend speed. Timings on a shared machine drift, so the two trees are interleaved
(ABBA order, so drift hits both alike) and the median of ``--repeats`` runs (≥ 3) of
each is compared; peak RSS (``wait4``) is reported too. The result replaces the
``ingest-regression`` section of ``bench/RESULTS.md`` with the command that
reproduces it.

Usage::

    python bench/ingest_regression.py                    # 24 wells × 9 sites, 200 features (a few minutes)
    python bench/ingest_regression.py --wells 96 --features 600 --repeats 5
    python bench/ingest_regression.py --quick            # smoke run
    python bench/ingest_regression.py --ref 1a2b3c4 --checkout archive   # no worktree: an exported copy
"""

from __future__ import annotations

import argparse
import datetime as dt
import filecmp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    Contender,
    mb,
    measure,
    runs_text,
    source_state,
    synth_once,
    verdict_at_most,
    warm,
    write_section,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / "work" / "ingest_regression"
BATCH = "BATCH1"
PLATE = "PLATE1"
DEFAULT_REF = "cf39918"
TARGET = 1.10  # current ÷ reference, median wall time
#: arguments both trees' ``collate`` accept (the reference predates later options)
COLLATE_ARGS = ["--backend", "sqlite", "--overwrite"]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def reference_tree(ref: str, how: str) -> tuple[Path, str]:
    """A checkout of ``ref`` in a temporary folder (reused when it is already there); its ``src`` and full sha."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    place = Path(tempfile.gettempdir(), f"bench-cytoprofile-ref-{sha[:12]}")
    if how == "worktree":
        if (place / ".git").exists() and git("rev-parse", "HEAD", cwd=place) == sha:
            return place / "src", sha
        shutil.rmtree(place, ignore_errors=True)
        git("worktree", "prune")
        git("worktree", "add", "--detach", str(place), sha)
        return place / "src", sha
    stamp = place / ".exported-commit"
    if stamp.exists() and stamp.read_text().strip() == sha:
        return place / "src", sha
    shutil.rmtree(place, ignore_errors=True)
    place.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha, "src"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(place)], input=archive, check=True)
    stamp.write_text(sha + "\n")
    return place / "src", sha


def check_imports(src: Path) -> None:
    """The tree's own ``cytoprofile`` is the one imported with its ``PYTHONPATH`` (not the installed one)."""
    code = "import cytoprofile, sys; sys.stdout.write(cytoprofile.__file__)"
    got = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(src)}, check=True,
                         capture_output=True, text=True).stdout
    if not Path(got).resolve().is_relative_to(src.resolve()):
        raise SystemExit(f"PYTHONPATH={src} imports {got}, not that tree; run from a venv without a conflicting install")


def check_cli(src: Path, log: Path) -> None:
    """The tree's ``collate`` accepts the arguments the benchmark passes."""
    out = subprocess.run([sys.executable, "-m", "cytoprofile", "collate", "--help"], env={**os.environ, "PYTHONPATH": str(src)},
                         capture_output=True, text=True)
    missing = [a for a in COLLATE_ARGS if a.startswith("--") and a not in out.stdout]
    if out.returncode != 0 or missing:
        log.write_text(out.stdout + out.stderr)
        raise SystemExit(f"{src}: collate does not accept {', '.join(missing) or 'its --help'}; see {log}")


def generate(ws: Path, *, wells: int, sites: int, cells: int, features: int) -> dict[str, Any]:
    """One plate of ``wells`` wells (of a 384-well layout) × ``sites`` sites, reused while its shape is unchanged."""
    sys.path.insert(0, str(REPO / "src"))  # the current tree's generator
    info, _ = synth_once(ws, batch=BATCH, plate=PLATE, wells=384, well_subset=wells, sites=sites, cells=cells,
                         features=features)
    return info


def workspace_for(name: str, data: Path) -> Path:
    """A workspace of its own per tree (its own backend/), sharing the plate's analysis/ folder."""
    ws = WORK / f"ws-{name}"
    shutil.rmtree(ws / "backend", ignore_errors=True)
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / "analysis").is_symlink():
        (ws / "analysis").symlink_to(data / "analysis", target_is_directory=True)
    return ws


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "run.log"
    log.write_text("")
    ref_src, sha = reference_tree(args.ref, args.checkout)
    trees = {"reference": ref_src, "current": REPO / "src"}
    for src in trees.values():
        check_imports(src)
        check_cli(src, WORK / "cli-check.log")
    data = WORK / "data"
    info = generate(data, wells=args.wells, sites=args.sites, cells=args.cells, features=args.features)
    warm(sorted((data / "analysis").rglob("*.csv")))
    spaces = {name: workspace_for(name, data) for name in trees}
    contenders = {name: Contender(name) for name in trees}
    order = list(trees)
    for i in range(args.repeats):
        for name in order if i % 2 == 0 else order[::-1]:  # ABBA: drift falls on both alike
            cmd = [sys.executable, "-m", "cytoprofile", "collate", str(spaces[name]), BATCH, PLATE, *COLLATE_ARGS]
            contenders[name].runs.append(measure(cmd, log, env={"PYTHONPATH": str(trees[name])}))
            print(f"  {name}: {contenders[name].runs[-1].seconds:.2f} s", flush=True)
    profiles = [spaces[n] / "backend" / BATCH / PLATE / f"{PLATE}.csv" for n in trees]
    same = all(p.exists() for p in profiles) and filecmp.cmp(*profiles, shallow=False)
    return {"sha": sha, "info": info, "contenders": contenders, "same_profiles": same, "log": log}


def report(args: argparse.Namespace, found: dict[str, Any]) -> str:
    ref, cur = found["contenders"]["reference"], found["contenders"]["current"]
    median = {c.name: statistics.median(r.seconds for r in c.runs) for c in (ref, cur)}
    ratio = median["current"] / median["reference"]
    info = found["info"]
    command = "python bench/ingest_regression.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k in ("ref", "wells", "sites", "cells", "features", "repeats") and v != DEFAULTS[k])
    rows = "\n".join(f"| {c.name} | {median[c.name]:.2f} | {runs_text(c)} | {mb(c.peak)} |" for c in (ref, cur))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"""## Backend speed against the reference commit (`bench/ingest_regression.py`)

{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {source_state()} vs reference {found['sha'][:9]}; {os.cpu_count()} cores,
load average {load:.1f} at the end, Python {platform.python_version()}. Reproduce: `{command}` (from the repository root
with the project's venv).

Plate: {info['sites']} sites ({args.wells} wells × {args.sites}), {info['cells']:,} cells, {args.features} features per
compartment, {info['csv_bytes'] / 1e6:,.0f} MB of CSV; `collate {' '.join(COLLATE_ARGS)}`, the two trees interleaved
(ABBA), {args.repeats} runs each.

| tree | median s | runs (s) | peak RSS |
|---|---|---|---|
{rows}

- current ÷ reference, median wall time: {verdict_at_most(ratio, TARGET)}
- check, per-well profiles of the two trees byte-identical: {'yes' if found['same_profiles'] else 'no (see the diff of the two PLATE1.csv under bench/work/ingest_regression/)'}
"""


DEFAULTS = {"ref": DEFAULT_REF, "wells": 24, "sites": 9, "cells": 40, "features": 200, "repeats": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=DEFAULTS["ref"], help="reference commit (default %(default)s)")
    parser.add_argument("--wells", type=int, default=DEFAULTS["wells"], help="wells of a 384-well plate")
    parser.add_argument("--sites", type=int, default=DEFAULTS["sites"], help="sites per well")
    parser.add_argument("--cells", type=int, default=DEFAULTS["cells"], help="mean cells per site")
    parser.add_argument("--features", type=int, default=DEFAULTS["features"], help="features per compartment")
    parser.add_argument("--repeats", type=int, default=DEFAULTS["repeats"], help="runs of each tree (≥ 3 for the verdict)")
    parser.add_argument("--checkout", choices=("worktree", "archive"), default="worktree",
                        help="reference as a git worktree, or an exported copy that leaves the repository's git data alone")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 wells × 2 sites, 1 run each, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print the report without touching RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.wells, args.sites, args.cells, args.features, args.repeats, args.no_write = 2, 2, 10, 20, 1, True
    found = run_benchmark(args)
    text = report(args, found)
    if args.repeats < 3:
        text += "- fewer than 3 runs each: not a verdict\n"
    print(text)
    if not args.no_write:
        write_section("ingest-regression", text)


if __name__ == "__main__":
    main()
