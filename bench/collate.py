"""Benchmark of plate collation: cytoprofile against the old ingest + aggregation path and a parse floor.

What: synthetic CellProfiler plates (``cytoprofile synth``) are turned into a
single-cell backend plus per-well median profiles by

* cytoprofile ``collate`` with the SQLite backend, and with the Parquet backend;
* the old path: ``cytominer-database ingest``, the indexes the handbook's collate
  creates, then pycytominer ``SingleCells(...).aggregate_profiles()`` (median),
  installed by this script from PyPI into its own venv (``bench/work/oldvenv``);
* a parse floor: Polars reading every CSV of every site on the same cores, which
  no ingest that parses the CSVs can beat.

Why: the targets for collate are, at JUMP width (~1,900 features per compartment,
~220 cells per site) ≥ 10× faster than the old path with SQLite, ≥ 20× with
Parquet and within 2× of the parse floor; and on a 384-well plate a peak RSS no
more than 1.3× that of a 96-well plate (memory must not grow with the plate).

Every contender runs in its own subprocess; wall time and peak RSS (``wait4``
rusage, what GNU ``time -v`` reports) are taken per run, contenders are
interleaved and repeated, and the best time is kept. Results go to the
``collate`` section of ``bench/RESULTS.md``.

Usage::

    python bench/collate.py            # full size (about 7 minutes)
    python bench/collate.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    Contender,
    Run,
    cytoprofile_bin,
    machine,
    mb,
    measure,
    runs_text,
    synth_once,
    verdict_at_least,
    verdict_at_most,
    warm,
    write_section,
)

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
OLD_VENV = WORK / "oldvenv"
BATCH = "BATCH1"
PLATE = "PLATE1"
IMAGE_CATEGORIES = ["Granularity", "Texture", "ImageQuality", "Count", "Threshold"]
#: Tried in order until the old ingest runs on this Python; the first set is what works today.
OLD_PIN_SETS: list[list[str]] = [
    ["cytominer-database==0.3.5", "pycytominer==1.7.1"],
    ["cytominer-database", "pycytominer", "pandas<2", "sqlalchemy<2", "click<8.1", "numpy<2"],
]
#: The ingest config, in the format cytominer-database reads (filenames, engine, schema).
OLD_INGEST_CONFIG = """[filenames]
image = Image.csv
object = object.csv
experiment = Experiment.csv

[ingestion_engine]
engine = SQLite

[schema]
reference_option = sample
ref_fraction = 1
type_conversion = int2float
"""

# Sizes. JUMP width: 16 sites, ~1,900 features per compartment, ~370 MB of CSV.


@dataclass(frozen=True)
class Sizes:
    """Plate shapes of one mode: the speed plate and the two memory plates (96 and 384 wells)."""

    speed: dict[str, int]
    memory: dict[str, int]
    repeats: int


FULL = Sizes(speed={"wells": 96, "well_subset": 4, "sites": 4, "cells": 226, "features": 1900},
             memory={"sites": 1, "cells": 50, "features": 200}, repeats=3)
QUICK = Sizes(speed={"wells": 96, "well_subset": 2, "sites": 2, "cells": 40, "features": 300},
              memory={"sites": 1, "cells": 10, "features": 30}, repeats=1)
TARGETS = {"old_over_sqlite": 10.0, "old_over_parquet": 20.0, "over_floor": 2.0, "memory_ratio": 1.3}


# --------------------------------------------------------------------------- measuring


# --------------------------------------------------------------------------- data


def generate(ws: Path, *, wells: int, sites: int, cells: int, features: int, well_subset: int | None = None) -> dict[str, Any]:
    """Synthesise one plate into ``ws`` unless a plate of the same shape is already there."""
    info, _ = synth_once(ws, batch=BATCH, plate=PLATE, wells=wells, sites=sites, cells=cells, features=features,
                         well_subset=well_subset)
    return info


def first_build(cyto: Path | str, ws: Path, backend: str, log: Path) -> Run:
    """One timed ``collate`` of the plate into one backend, as a first build: the plate's backend folder is
    removed first (outside the timing). ``--overwrite`` over the other backend's run would rebuild that
    backend too (a re-run never leaves a backend stale), timing both."""
    out = ws / "backend" / BATCH / PLATE
    shutil.rmtree(out, ignore_errors=True)
    run = measure([cyto, "collate", ws, BATCH, PLATE, "--backend", backend, "--quiet"], log)
    other = {"sqlite": f"{PLATE}_Image.parquet", "parquet": f"{PLATE}.sqlite"}[backend]
    if (out / other).exists():
        raise RuntimeError(f"{out}: the {backend} run wrote {other} too; the timing is not of one backend")
    return run


def site_root(ws: Path) -> Path:
    """The folder holding one subfolder per site."""
    return ws / "analysis" / BATCH / PLATE / "analysis"


# --------------------------------------------------------------------------- the old path


def old_python() -> Path:
    """Python of the old tools' venv."""
    return OLD_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_old_venv(log: Path) -> dict[str, Any]:
    """Create ``bench/work/oldvenv`` with cytominer-database and pycytominer; return what was installed.

    Tries each pin set until a tiny ingest works; ``{"ok": False, "why": ...}`` if none does.
    """
    marker = OLD_VENV / "bench-ok.json"
    if marker.exists():
        return json.loads(marker.read_text())
    why = []
    for pins in OLD_PIN_SETS:
        shutil.rmtree(OLD_VENV, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(OLD_VENV)], check=True, capture_output=True)
            with open(log, "ab") as out:
                subprocess.run([str(old_python()), "-m", "pip", "install", "--quiet", *pins], check=True, stdout=out,
                               stderr=subprocess.STDOUT)
            smoke_old_path(log)
        except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
            why.append(f"pins {' '.join(pins)}: {str(exc).splitlines()[0][:300]}")
            continue
        info = {"ok": True, "pins": pins, "versions": old_versions()}
        marker.write_text(json.dumps(info, indent=1))
        return info
    return {"ok": False, "why": why}


def old_versions() -> dict[str, str]:
    """Versions of the packages in the old venv."""
    code = ("import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in "
            "['cytominer-database', 'pycytominer', 'pandas', 'sqlalchemy', 'numpy']}))")
    out = subprocess.run([str(old_python()), "-c", code], check=True, capture_output=True, text=True).stdout
    versions: dict[str, str] = json.loads(out)
    versions["python"] = subprocess.run([str(old_python()), "-c", "import platform; print(platform.python_version())"],
                                        check=True, capture_output=True, text=True).stdout.strip()
    return versions


def smoke_old_path(log: Path) -> None:
    """A two-site plate through the old ingest + aggregation; raises if anything is off."""
    ws = WORK / "collate" / "old-smoke"
    generate(ws, wells=96, sites=1, cells=5, features=10, well_subset=2)
    run_old_path(ws, WORK / "collate" / "old-smoke.sqlite", WORK / "collate" / "old-smoke.csv", log)
    text = (WORK / "collate" / "old-smoke.csv").read_text().splitlines()
    if len(text) != 3:
        raise RuntimeError(f"old path smoke run: expected 2 wells, got {len(text) - 1}")


def old_config() -> Path:
    """Write the ingest config file."""
    path = WORK / "collate" / "ingest_config.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OLD_INGEST_CONFIG)
    return path


def run_old_path(ws: Path, db: Path, out: Path, log: Path) -> dict[str, Run]:
    """Ingest, index, aggregate, each step its own process of the old venv's Python."""
    db.unlink(missing_ok=True)  # the ingest appends to an existing database
    out.unlink(missing_ok=True)
    steps: dict[str, Run] = {}
    ingest = OLD_VENV / "bin" / "cytominer-database"
    steps["ingest"] = measure([ingest, "ingest", "--no-munge", site_root(ws), f"sqlite:///{db}", "-c", old_config()], log)
    steps["index"] = measure([old_python(), __file__, "_old-index", db], log)
    steps["aggregate"] = measure([old_python(), __file__, "_old-aggregate", db, out], log)
    return steps


def substitute_old_path(ws: Path, db: Path, out: Path, log: Path) -> dict[str, Run]:
    """Stand-in when the old ingest cannot be installed: a pandas ``to_sql`` ingest shaped like it, same index and aggregation."""
    db.unlink(missing_ok=True)
    out.unlink(missing_ok=True)
    return {
        "ingest": measure([sys.executable, __file__, "_substitute-ingest", site_root(ws), db], log),
        "index": measure([sys.executable, __file__, "_old-index", db], log),
        "aggregate": measure([sys.executable, __file__, "_old-aggregate", db, out], log),
    }


def _old_index(db: str) -> None:
    """The indexes the handbook's collate creates after ingest."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE INDEX IF NOT EXISTS table_image_idx ON Image(TableNumber, ImageNumber)")
    for compartment in ("Cells", "Cytoplasm", "Nuclei"):
        conn.execute(f"CREATE INDEX IF NOT EXISTS table_image_object_{compartment.lower()}_idx "
                     f"ON {compartment}(TableNumber, ImageNumber, ObjectNumber)")
    conn.execute("CREATE INDEX IF NOT EXISTS plate_well_image_idx ON Image(Metadata_Plate, Metadata_Well)")
    conn.close()


def _old_aggregate(db: str, out: str) -> None:
    """Per-well medians with pycytominer's SingleCells, image features on, as the handbook's collate."""
    import warnings

    warnings.simplefilter("ignore")
    from pycytominer.cyto_utils.cells import SingleCells

    cells = SingleCells(f"sqlite:///{db}", strata=["Metadata_Plate", "Metadata_Well"], aggregation_operation="median",
                        add_image_features=True, image_feature_categories=IMAGE_CATEGORIES, image_table_name="Image")
    cells.aggregate_profiles(output_file=out)


def _substitute_ingest(source: str, db: str) -> None:
    """Per site: pandas reads each CSV, prefixes columns, adds the CRC32 TableNumber and appends with ``to_sql``."""
    import sqlite3
    import warnings
    import zlib

    import pandas as pd

    warnings.simplefilter("ignore")
    conn = sqlite3.connect(db)
    for site in sorted(p for p in Path(source).iterdir() if p.is_dir()):
        image = site / "Image.csv"
        number = zlib.crc32(image.read_bytes()) & 0xFFFFFFFF
        for csv in [image, *sorted(p for p in site.glob("*.csv") if p.name != "Image.csv")]:
            df = pd.read_csv(csv)
            table = csv.stem.capitalize()
            if csv != image:
                df.columns = [c if c in ("ImageNumber", "ObjectNumber") else f"{table}_{c}" for c in df.columns]
            df.insert(0, "TableNumber", number)
            df.to_sql(table, conn, if_exists="append", index=False)
    conn.commit()
    conn.close()


# --------------------------------------------------------------------------- parse floor


def _parse_floor(source: str, threads: int) -> None:
    """Read every CSV of every site with Polars, ``threads`` files at a time (Polars also threads inside)."""
    from concurrent.futures import ThreadPoolExecutor

    import polars as pl

    files = sorted(Path(source).glob("*/*.csv"))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = sum(df.height for df in pool.map(pl.read_csv, files))
    print(f"{len(files)} files, {rows} rows")


# --------------------------------------------------------------------------- comparing outputs


def compare_profiles(ours: Path, old: Path) -> str:
    """Check the contenders computed the same thing: wells, columns and largest relative difference."""
    import numpy as np
    import pandas as pd

    a = pd.read_csv(ours)
    b = pd.read_csv(old)
    common = [c for c in a.columns if c in set(b.columns)]
    only_ours = [c for c in a.columns if c not in set(b.columns)]
    only_old = [c for c in b.columns if c not in set(a.columns)]
    a = a.sort_values(["Metadata_Plate", "Metadata_Well"]).reset_index(drop=True)
    b = b.sort_values(["Metadata_Plate", "Metadata_Well"]).reset_index(drop=True)
    numeric = [c for c in common if pd.api.types.is_numeric_dtype(a[c]) and pd.api.types.is_numeric_dtype(b[c])]
    x = a[numeric].to_numpy(float)
    y = b[numeric].to_numpy(float)
    rel = np.nanmax(np.abs(x - y) / np.maximum(np.abs(y), 1e-12)) if numeric and len(a) == len(b) else float("nan")
    return (f"{len(a)} vs {len(b)} wells, {len(common)} common columns ({len(only_ours)} only in ours, "
            f"{len(only_old)} only in the old output), largest relative difference {rel:.1e}")


# --------------------------------------------------------------------------- report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    parser.add_argument("--repeats", type=int, help="runs per contender (best is kept); default 3, 1 with --quick")
    parser.add_argument("--skip-old", action="store_true", help="leave out the old path")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or sizes.repeats
    root = WORK / ("collate-quick" if args.quick else "collate")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    log.write_text("")
    cyto = cytoprofile_bin()

    # -- old tools
    old: dict[str, Any] = {"ok": False, "why": ["skipped (--skip-old)"]}
    if not args.skip_old:
        print("old path: preparing its venv (first run installs from PyPI) …", flush=True)
        old = ensure_old_venv(WORK / "oldvenv-install.log")
        if not old["ok"]:
            print("old path cannot be installed; using the labelled substitute:\n  " + "\n  ".join(old["why"]))

    # -- speed at JUMP width
    ws = root / "jump"
    print(f"generating {ws} …", flush=True)
    info = generate(ws, **sizes.speed)
    warm(sorted(site_root(ws).glob("*/*.csv")))
    contenders = {k: Contender(k) for k in ("sqlite", "parquet", "old", "floor")}
    old_db, old_out = root / "old.sqlite", root / "old_profiles.csv"
    for rep in range(repeats):
        for key in ("floor", "sqlite", "parquet", "old"):
            if key == "old" and args.skip_old:
                continue
            print(f"  run {rep + 1}/{repeats}: {key} …", end=" ", flush=True)
            if key == "floor":
                run = measure([sys.executable, __file__, "_parse-floor", site_root(ws), "2"], log)
            elif key in ("sqlite", "parquet"):
                run = first_build(cyto, ws, key, log)
            else:
                steps = (run_old_path if old["ok"] else substitute_old_path)(ws, old_db, old_out, log)
                run = Run(sum(s.seconds for s in steps.values()), max(s.max_rss for s in steps.values()))
                for step, s in steps.items():
                    contenders[key].steps.setdefault(step, []).append(s.seconds)
            contenders[key].runs.append(run)
            print(f"{run.seconds:.2f} s, {mb(run.max_rss)}", flush=True)
    agreement = compare_profiles(ws / "backend" / BATCH / PLATE / f"{PLATE}.csv", old_out) if not args.skip_old else "not checked"

    # -- memory: 96- vs 384-well plate
    memory: dict[tuple[int, str], Contender] = {}
    plates: dict[int, dict[str, Any]] = {}
    for wells in (96, 384):
        mws = root / f"mem{wells}"
        print(f"generating {mws} …", flush=True)
        plates[wells] = generate(mws, wells=wells, **sizes.memory)
        warm(sorted(site_root(mws).glob("*/*.csv")))
    for rep in range(repeats):
        for wells in (96, 384):
            for backend in ("sqlite", "parquet"):
                c = memory.setdefault((wells, backend), Contender(f"{wells}-{backend}"))
                run = first_build(cyto, root / f"mem{wells}", backend, log)
                c.runs.append(run)
                print(f"  run {rep + 1}/{repeats}: {wells}-well {backend}: {run.seconds:.2f} s, {mb(run.max_rss)}", flush=True)

    body = report(args, sizes, info, contenders, old, agreement, memory, plates, repeats)
    print(body)
    if not args.no_write:
        write_section("collate", body)
        print(f"wrote {RESULTS}")
    return 0


def report(args: argparse.Namespace, sizes: Sizes, info: dict[str, Any], contenders: dict[str, Contender],
           old: dict[str, Any], agreement: str, memory: dict[tuple[int, str], Contender], plates: dict[int, dict[str, Any]],
           repeats: int) -> str:
    """The markdown section."""
    m = machine("cytoprofile", "pyarrow", "polars", "pandas", "pycytominer")
    sites = int(info["sites"])
    sp = sizes.speed
    cmd = "python bench/collate.py" + (" --quick" if args.quick else "") + (" --skip-old" if args.skip_old else "")
    lines = [
        "## Collate: CSV → backend + per-well profiles",
        "",
        f"Run {m['date']} ({m['source']}) on {m['cores']} cores ({m['cpu']}), Python {m['python']}; cytoprofile {m['cytoprofile']}, "
        f"pyarrow {m['pyarrow']}, Polars {m['polars']}, pandas {m['pandas']}."
        + (" **Quick mode: small sizes, not the benchmark.**" if args.quick else ""),
        "",
        f"Reproduce: `{cmd}` (from the repository root, with the project's venv; "
        f"the old tools are installed into `bench/work/oldvenv` on the first run).",
        "",
        f"Plate: {sites} sites ({info['wells']} wells × {sp['sites']} sites), {sp['features']:,} features per compartment, "
        f"{info['cells'] / sites:.0f} cells per site on average, {info['files']} CSV files, {mb(info['csv_bytes'])} of CSV. "
        f"Each contender runs in its own process, {repeats} time(s), interleaved; best time kept, largest peak RSS kept; "
        "files are in the page cache for all.",
        "",
    ]
    if old["ok"]:
        v = old["versions"]
        lines.append(f"Old path: cytominer-database {v['cytominer-database']} `ingest` (pandas {v['pandas']}, SQLAlchemy "
                     f"{v['sqlalchemy']}, Python {v['python']}), the handbook collate's four indexes, then pycytominer "
                     f"{v['pycytominer']} `SingleCells(..., aggregation_operation=\"median\", add_image_features=True)"
                     ".aggregate_profiles()`; installed with `pip install " + " ".join(old["pins"]) + "`.")
    elif "old" in contenders and contenders["old"].runs:
        lines.append("**Old path substitute** (the old ingest could not be installed: " + "; ".join(old["why"]) + "): a pandas "
                     "`to_sql` ingest that reads, prefixes and appends each CSV as the old tool does, the same indexes, and "
                     "pycytominer `SingleCells` median aggregation from the cytoprofile venv.")
    lines += ["", "| contender | best s | s / site | runs (s) | peak RSS |", "| --- | ---: | ---: | --- | ---: |"]
    labels = {"sqlite": "cytoprofile collate, SQLite backend", "parquet": "cytoprofile collate, Parquet backend",
              "old": "old path (ingest + index + aggregate)" if old["ok"] else "old path SUBSTITUTE",
              "floor": "parse floor (Polars read_csv, 2 threads)"}
    for key in ("sqlite", "parquet", "old", "floor"):
        c = contenders[key]
        if c.runs:
            lines.append(f"| {labels[key]} | {c.best:.2f} | {c.best / sites:.3f} | {runs_text(c)} | {mb(c.peak)} |")
    old_c = contenders["old"]
    if old_c.steps:
        parts = ", ".join(f"{k} {min(v):.2f} s ({min(v) / sites:.2f} s/site)" for k, v in old_c.steps.items())
        lines += ["", f"Old path by step (best): {parts}."]
    floor = contenders["floor"].best
    lines += ["", "| ratio | value | target |", "| --- | ---: | --- |"]
    if old_c.runs:
        for key, tkey in (("sqlite", "old_over_sqlite"), ("parquet", "old_over_parquet")):
            r = old_c.best / contenders[key].best
            lines.append(f"| old / cytoprofile {key} | {r:.1f}× | ≥ {TARGETS[tkey]:g}×: {verdict_at_least(r, TARGETS[tkey])} |")
        lines.append(f"| old / parse floor | {old_c.best / floor:.1f}× | (context) |")
    for key in ("sqlite", "parquet"):
        r = contenders[key].best / floor
        lines.append(f"| cytoprofile {key} / parse floor | {r:.2f}× | ≤ {TARGETS['over_floor']:g}×: {verdict_at_most(r, TARGETS['over_floor'])} |")
    lines += ["", f"Outputs agree (cytoprofile SQLite run vs old path): {agreement}.", ""]
    mp = sizes.memory
    lines += [
        f"Memory: a 96-well and a 384-well plate, {mp['sites']} site per well, ~{mp['cells']} cells per site, "
        f"{mp['features']} features per compartment ({plates[96]['files']} and {plates[384]['files']} CSV files, "
        f"{mb(plates[96]['csv_bytes'])} and {mb(plates[384]['csv_bytes'])}).",
        "",
        "| backend | 96-well peak RSS | 384-well peak RSS | 384 / 96 | target ≤ 1.3× | 96-well s | 384-well s |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for backend in ("sqlite", "parquet"):
        a, b = memory[(96, backend)], memory[(384, backend)]
        r = b.peak / a.peak
        lines.append(f"| {backend} | {mb(a.peak)} | {mb(b.peak)} | {r:.2f}× | {verdict_at_most(r, TARGETS['memory_ratio'])} "
                     f"| {a.best:.2f} | {b.best:.2f} |")
    return "\n".join(lines) + "\n"


def _hidden(argv: list[str]) -> bool:
    """Subcommands this file runs in child processes (some under the old venv's Python)."""
    if not argv:
        return False
    command, rest = argv[0], argv[1:]
    if command == "_old-index":
        _old_index(rest[0])
    elif command == "_old-aggregate":
        _old_aggregate(rest[0], rest[1])
    elif command == "_substitute-ingest":
        _substitute_ingest(rest[0], rest[1])
    elif command == "_parse-floor":
        _parse_floor(rest[0], int(rest[1]))
    else:
        return False
    return True


if __name__ == "__main__":
    if not _hidden(sys.argv[1:]):
        sys.exit(main())
