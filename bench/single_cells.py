"""Benchmark of the joined single-cell table: cytoprofile against CytoTable and pycytominer's merge.

What: one synthetic plate at JUMP width (``cytoprofile synth``: ~1,900 features
per compartment, ~220 cells a site, 4 sites, 16 with ``--full``) is collated once into SQLite and
Parquet backends; then the joined single-cell table is made by

* ``cytoprofile single-cells`` from the Parquet backend and from the SQLite backend
  (Parquet output), and from Parquet with both Parquet and AnnData output;
* pycytominer 1.7.1 ``SingleCells.merge_single_cells`` from the SQLite backend
  (written to Parquet), in this venv;
* CytoTable's ``convert`` of the same site CSVs (preset ``cellprofiler_csv``, joined,
  one Parquet), in its own venv ``bench/work/cytotable-venv`` (its pins pull
  pandas < 3, so it cannot share ours), when it installs.

Checks: our table equals pycytominer's row for row and value for value (sorted by
keys); CytoTable's output holds the same cells (plate, well, site, ImageNumber and
the Cytoplasm ObjectNumber). Memory: peak RSS of ``single-cells`` on a 96- and a
384-well plate at ~200 features (the target: 384-well ≤ 1.3× 96-well). With
``--cosmicqc`` coSMicQC 1.1.2 is installed into ``bench/work/cosmicqc-venv`` and
its outlier flags for the three default sets are compared with ours.

Every contender runs in its own subprocess (wall time and peak RSS from ``wait4``);
results go to the ``single_cells`` section of ``bench/RESULTS.md``.

Usage::

    python bench/single_cells.py               # JUMP width, 4 sites (minutes on a shared machine)
    python bench/single_cells.py --full        # JUMP width, 16 sites
    python bench/single_cells.py --quick       # smoke run
    python bench/single_cells.py --cosmicqc    # also compare flags with coSMicQC
    python bench/single_cells.py --cytotable-only --cytotable-python /tmp/ctvenv/bin/python
                                               # CSV → joined Parquet, ours against CytoTable only (2 sites)

``--cytotable-python`` names an interpreter that already has ``cytotable`` (and the DuckDB
extension wheels of ``VENVS``) instead of making ``bench/work/cytotable-venv``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    Contender,
    Run,
    cytoprofile_bin,
    mb,
    measure,
    runs_text,
    save_info,
    source_state,
    synth_once,
    verdict_at_least,
    verdict_at_most,
    write_section,
)

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
BATCH, PLATE = "BATCH1", "PLATE1"
FULL = {"speed": {"wells": 96, "well_subset": 4, "sites": 4, "cells": 220, "features": 1900},
        "memory": {"sites": 1, "cells": 20, "features": 200}, "repeats": 1}
#: the default: JUMP width, 4 sites (CytoTable alone takes many minutes for 16 sites on a shared 2-core machine)
DEFAULT = {**FULL, "speed": {**FULL["speed"], "well_subset": 2, "sites": 2}}
#: ``--cytotable-only``: JUMP width, 2 sites (CytoTable needs minutes even for a tiny plate on a shared machine)
CYTOTABLE_ONLY = {"wells": 96, "well_subset": 2, "sites": 1, "cells": 220, "features": 1900}
QUICK = {"speed": {"wells": 96, "well_subset": 2, "sites": 2, "cells": 30, "features": 200},
         "memory": {"sites": 1, "cells": 10, "features": 30}, "repeats": 1}
OUR_START = "start: Python importing what single-cells imports, no work"
MERGE_START = "start: Python importing merge_single_cells, no work"
ADBC_READ = "bound: SQLite driver (ADBC) reads every row to Arrow, nothing else"
C_READ = "bound: SQLite C API decodes every value, nothing else"
TARGETS = {"cytotable_over_ours": 10.0, "merge_over_ours": 10.0, "memory_ratio": 1.3}
#: CytoTable's DuckDB downloads its sqlite/httpfs extensions at run time; here they come from PyPI wheels instead
VENVS = {"cytotable": ["cytotable", "duckdb==1.4.4", "duckdb-ext-sqlite==1.4.4.20260205", "duckdb-ext-httpfs==1.4.4.20260205"],
         "cosmicqc": ["cosmicqc==1.1.2"]}


def generate(ws: Path, *, wells: int, sites: int, cells: int, features: int, well_subset: int | None = None) -> dict[str, Any]:
    """Synthesise and collate one plate (SQLite and Parquet backends) unless the same shape is there."""
    info, made = synth_once(ws, batch=BATCH, plate=PLATE, wells=wells, sites=sites, cells=cells, features=features,
                            well_subset=well_subset)
    if made or "collate_seconds" not in info:
        log = ws.parent / f"{ws.name}-collate.log"
        collate = measure([cytoprofile_bin(), "collate", ws, BATCH, PLATE, "--backend", "sqlite", "--backend", "parquet",
                           "--overwrite", "--quiet"], log)
        info |= {"collate_seconds": collate.seconds, "collate_rss": collate.max_rss}
        save_info(ws, info)
    return info


def venv_python(name: str, log: Path) -> Path | None:
    """Python of ``bench/work/<name>-venv``, created on first use; None when the package does not install."""
    venv = WORK / f"{name}-venv"
    python = venv / "bin" / "python"
    marker = venv / "bench-ok"
    if marker.exists():
        return python
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        with open(log, "ab") as out:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *VENVS[name]], check=True, stdout=out,
                           stderr=subprocess.STDOUT, timeout=1200)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"{name}: cannot install ({str(exc)[:200]}); left out", flush=True)
        return None
    marker.write_text("ok\n")
    return python


def _run(contenders: dict[str, Contender], log: Path, name: str, cmd: Sequence[Any]) -> None:
    """Time one run of a contender (its own subprocess) and keep it under ``name``."""
    print(f"  {name} …", end=" ", flush=True)
    r = measure(cmd, log)
    contenders.setdefault(name, Contender(name)).runs.append(r)
    print(f"{r.seconds:.2f} s, {mb(r.max_rss)}", flush=True)


def compile_sources(log: Path) -> None:
    """Byte-compile cytoprofile's modules once, as an install does: with PYTHONDONTWRITEBYTECODE set,
    a checkout would otherwise compile them again in every timed run (pycytominer's are compiled)."""
    import cytoprofile

    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(cytoprofile.__file__).parent)], check=False,
                       stdout=out, stderr=subprocess.STDOUT, timeout=300)


#: the least any reader of SQLite does: step every row and decode every value through the C API, keep nothing
_MINIMAL_C = r"""
#include <sqlite3.h>
#include <stdio.h>
int main(int argc, char **argv) {
  sqlite3 *db; double sum = 0; long rows = 0;
  if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READONLY, 0) != SQLITE_OK) return 2;
  for (int a = 2; a < argc; a++) {
    char sql[512]; sqlite3_stmt *st; snprintf(sql, sizeof sql, "SELECT * FROM \"%s\"", argv[a]);
    if (sqlite3_prepare_v2(db, sql, -1, &st, 0) != SQLITE_OK) return 3;
    int n = sqlite3_column_count(st);
    while (sqlite3_step(st) == SQLITE_ROW) { for (int k = 0; k < n; k++) sum += sqlite3_column_double(st, k); rows++; }
    sqlite3_finalize(st);
  }
  printf("%ld rows, checksum %g\n", rows, sum);
  return sqlite3_close(db);
}
"""


def minimal_c_reader(log: Path) -> Path | None:
    """The minimal C reader, compiled into bench/work (None without a C compiler and SQLite's header)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source, binary = WORK / "sqlite_minimal_read.c", WORK / "sqlite_minimal_read"
    source.write_text(_MINIMAL_C)
    with open(log, "ab") as out:
        done = subprocess.run([cc, "-O2", "-o", str(binary), str(source), "-lsqlite3"], stdout=out, stderr=subprocess.STDOUT,
                              timeout=120, check=False)
    return binary if done.returncode == 0 else None


# ---------------------------------------------------------------- child processes


def _adbc_read(db: str, tables: Sequence[str]) -> None:
    """Every row of the tables read into Arrow by the SQLite driver we use, batch by batch, kept nowhere."""
    import adbc_driver_manager as adbc
    import adbc_driver_sqlite
    import pyarrow as pa

    conn = adbc.AdbcConnection(adbc_driver_sqlite.connect(f"file:{os.path.abspath(db)}?mode=ro"))
    for table in tables:
        statement = adbc.AdbcStatement(conn)
        statement.set_sql_query(f'SELECT * FROM "{table}"')
        handle, _ = statement.execute_query()
        for _batch in pa.RecordBatchReader.from_stream(handle):
            pass
        statement.close()


def _merge(db: str, out: str) -> None:
    """pycytominer's single-cell merge of an SQLite backend, written to Parquet."""
    import warnings

    from pycytominer.cyto_utils.cells import SingleCells

    warnings.simplefilter("ignore")
    sc = SingleCells(f"sqlite:///{db}", strata=["Metadata_Plate", "Metadata_Well"],
                     image_cols=["TableNumber", "ImageNumber", "Metadata_Site"], image_table_name="Image")
    sc.merge_single_cells().to_parquet(out)


_CYTOTABLE = """
import os, sys
import duckdb, duckdb_ext
extensions = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
_connect = duckdb.connect
def connect(*args, **kwargs):
    config = dict(kwargs.pop("config", None) or {})
    config.setdefault("extension_directory", extensions)
    return _connect(*args, config=config, **kwargs)
duckdb.connect = connect
import cytotable
from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
cytotable.convert(source_path=sys.argv[1], dest_path=sys.argv[2], dest_datatype="parquet", preset="cellprofiler_csv",
                  concat=True, join=True,
                  parsl_config=Config(executors=[ThreadPoolExecutor(max_threads=2)], run_dir=sys.argv[3]))
"""

_COSMICQC = """
import json, sys
import pandas as pd
import cosmicqc
df = pd.read_parquet(sys.argv[1])
sets = json.loads(sys.argv[2])
out = {}
for name, conditions in sets.items():
    flagged = cosmicqc.find_outliers(df=df, metadata_columns=[], feature_thresholds=conditions)
    out[name] = sorted(int(i) for i in flagged.index)
print(json.dumps(out))
"""


# ---------------------------------------------------------------- checks


def compare_merge(ours: Path, ref: Path) -> str:
    """Row for row, value for value (after sorting by keys; our Metadata columns come first)."""
    import numpy as np
    import pandas as pd

    keys = ["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_ObjectNumber_cytoplasm"]
    a = pd.read_parquet(ours)
    b = pd.read_parquet(ref)
    if sorted(a.columns) != sorted(b.columns):
        return f"columns differ: {sorted(set(a.columns) ^ set(b.columns))[:5]}"
    a = a.sort_values(keys).reset_index(drop=True)
    b = b[list(a.columns)].astype({k: "int64" for k in keys}).sort_values(keys).reset_index(drop=True)
    feats = [c for c in a.columns if not c.startswith("Metadata_")]
    same = len(a) == len(b) and np.array_equal(a[feats].to_numpy(float), b[feats].to_numpy(float), equal_nan=True)
    return f"{'identical' if same else 'DIFFERENT'}: {len(a):,} cells × {a.shape[1]:,} columns"


def compare_cytotable(ours: Path, theirs: Path) -> str:
    """Same cells, by identity: ImageNumber, the Cytoplasm ObjectNumber and its two parents (each
    synthetic site has its own ImageNumber); then the shared feature columns, value for value."""
    import numpy as np
    import pandas as pd

    links = ["Metadata_ImageNumber", "Metadata_Cytoplasm_Parent_Cells", "Metadata_Cytoplasm_Parent_Nuclei"]
    t = pd.read_parquet(theirs).rename(columns={"Metadata_ObjectNumber": "cytoplasm"})
    o = pd.read_parquet(ours).rename(columns={"Metadata_ObjectNumber_cytoplasm": "cytoplasm"})
    keys = [*links, "cytoplasm"]
    a = set(map(tuple, o[keys].to_numpy(np.int64).tolist()))
    b = set(map(tuple, t[keys].to_numpy(np.int64).tolist()))
    if not (a == b and len(o) == len(t) == len(a)):
        return f"DIFFERENT: ours {len(o):,}, CytoTable {len(t):,}, only ours {len(a - b)}, only CytoTable {len(b - a)}"
    shared = [c for c in o.columns if c in t.columns and not c.startswith("Metadata_") and c != "cytoplasm"]
    o = o.sort_values(keys).reset_index(drop=True)
    t = t.sort_values(keys).reset_index(drop=True)
    same = np.array_equal(o[shared].to_numpy(float), t[shared].to_numpy(float), equal_nan=True)
    return (f"same cells ({len(a):,}, by image, Cytoplasm object and its Cells and Nuclei parents); "
            f"{len(shared):,} shared feature columns {'equal' if same else 'DIFFERENT'}")


def compare_cosmicqc(python: Path, table: Path, log: Path) -> str:
    """coSMicQC's outliers (row positions) per default set against our flags on the same table."""
    import pandas as pd

    from cytoprofile.cell_qc import flag_column, load_thresholds

    sets = load_thresholds()
    plain = table.with_name("cosmicqc-input.parquet")
    df = pd.read_parquet(table)
    df[[c for c in df.columns if not c.startswith("Metadata_cqc_")]].to_parquet(plain)
    out = subprocess.run([str(python), "-c", _COSMICQC, str(plain), json.dumps(sets)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        log.write_text(log.read_text() + out.stderr)
        return f"coSMicQC failed (see {log.name})"
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    lines = []
    for name in sets:
        ours = sorted(int(i) for i in df.index[df[flag_column(name)]])
        lines.append(f"{name}: {'same' if ours == theirs[name] else 'DIFFERENT'} ({len(ours)} ours, {len(theirs[name])} coSMicQC)")
    return "; ".join(lines)


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--full", action="store_true", help="16 JUMP-width sites instead of 4")
    parser.add_argument("--no-cytotable", action="store_true", help="leave out CytoTable")
    parser.add_argument("--cosmicqc", action="store_true", help="compare cell QC flags with coSMicQC (own venv)")
    parser.add_argument("--cytotable-only", action="store_true",
                        help="only CSV → joined Parquet, ours against CytoTable (its own RESULTS.md section)")
    parser.add_argument("--cytotable-python", type=Path, default=None,
                        help="an interpreter with cytotable installed (default: make bench/work/cytotable-venv)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the peak RSS of a 96- and a 384-well plate from each input (its own RESULTS.md section)")
    parser.add_argument("--no-write", action="store_true", help="print the report, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if args.cytotable_only:
        return cytotable_only(args)
    if args.memory_only:
        return memory_only(args)
    started = time.perf_counter()
    sizes: dict[str, Any] = QUICK if args.quick else FULL if args.full else DEFAULT
    root = WORK / ("single_cells-quick" if args.quick else "single_cells")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    log.write_text("")
    cyto = cytoprofile_bin()
    ws = root / "jump"
    print(f"generating and collating {ws} …", flush=True)
    info = generate(ws, **sizes["speed"])
    backend = ws / "backend" / BATCH / PLATE
    contenders: dict[str, Contender] = {}
    checks: dict[str, str] = {}
    run = functools.partial(_run, contenders, log)
    compile_sources(log)
    base = [cyto, "single-cells", ws, BATCH, PLATE, "--quiet"]
    for _ in range(sizes["repeats"]):
        run("ours, SQLite backend", [*base, "--backend", "sqlite"])
        shutil.copy(backend / f"{PLATE}_single_cells.parquet", root / "ours-from-sqlite.parquet")
        if args.full or args.quick:  # left out of the default run to keep it short
            run("ours, Parquet + AnnData", [*base, "--backend", "parquet", "--format", "parquet", "--format", "anndata"])
        if args.full or args.quick or args.cosmicqc:
            run("ours, Parquet + cell QC", [*base, "--backend", "parquet", "--cell-qc"])
            shutil.copy(backend / f"{PLATE}_single_cells.parquet", root / "ours-qc.parquet")
        run("ours, Parquet backend", [*base, "--backend", "parquet"])
    ours = backend / f"{PLATE}_single_cells.parquet"
    shutil.copy(ours, root / "ours-from-parquet.parquet")
    collate = [cyto, "collate", ws, BATCH, PLATE, "--backend", "sqlite", "--overwrite", "--quiet"]
    run("collate (SQLite backend)", collate)
    run("collate --single-cells (same pass)", [*collate, "--single-cells"])
    checks["collate --single-cells = single-cells from SQLite"] = compare_merge(ours, root / "ours-from-sqlite.parquet")
    run("pycytominer merge_single_cells (SQLite)", [sys.executable, __file__, "_merge", backend / f"{PLATE}.sqlite", root / "merge.parquet"])
    run(OUR_START, [sys.executable, "-c", "import cytoprofile.cli.single_cells, cytoprofile.single_cells, adbc_driver_sqlite"])
    run(MERGE_START, [sys.executable, "-c", "from pycytominer.cyto_utils.cells import SingleCells"])
    compartments = ["Cytoplasm", "Cells", "Nuclei"]
    run(ADBC_READ, [sys.executable, __file__, "_adbc_read", backend / f"{PLATE}.sqlite", *compartments])
    c_reader = minimal_c_reader(log)
    if c_reader is not None:
        run(C_READ, [c_reader, backend / f"{PLATE}.sqlite", *compartments])
    checks["pycytominer merge_single_cells"] = compare_merge(root / "ours-from-sqlite.parquet", root / "merge.parquet")
    checks["Parquet backend = SQLite backend"] = compare_merge(root / "ours-from-parquet.parquet", root / "ours-from-sqlite.parquet")
    cytotable = None if args.no_cytotable else _cytotable_python(args)
    if cytotable is not None:
        dest = root / "cytotable.parquet"
        shutil.rmtree(dest, ignore_errors=True)
        dest.unlink(missing_ok=True)
        run("CytoTable convert (CSV)", [cytotable, "-c", _CYTOTABLE, ws / "analysis" / BATCH / PLATE / "analysis", dest,
                                        root / "parsl-runinfo"])
        checks["CytoTable cellprofiler_csv"] = compare_cytotable(ours, dest)
    if args.cosmicqc:
        python = venv_python("cosmicqc", WORK / "cosmicqc-install.log")
        checks["coSMicQC 1.1.2 flags"] = compare_cosmicqc(python, root / "ours-qc.parquet", log) if python else "coSMicQC did not install"

    memory: dict[int, Contender] = {}
    for wells in (96, 384):
        mws = root / f"mem{wells}"
        print(f"generating and collating {mws} …", flush=True)
        generate(mws, wells=wells, **sizes["memory"])
        c = memory.setdefault(wells, Contender(f"{wells}-well"))
        r = measure([cyto, "single-cells", mws, BATCH, PLATE, "--backend", "parquet", "--quiet"], log)
        c.runs.append(r)
        print(f"  {wells}-well: {r.seconds:.2f} s, {mb(r.max_rss)}", flush=True)

    info["bench_seconds"] = time.perf_counter() - started
    body = report(args, info, contenders, checks, memory)
    print(body)
    if not args.no_write:
        write_section("single_cells", body)
        print(f"wrote {RESULTS}")
    return 0


MEMORY_RUNS = {"single-cells, Parquet backend": ("single-cells", "--backend", "parquet"),
               "single-cells, SQLite backend": ("single-cells", "--backend", "sqlite"),
               "collate --single-cells (site CSVs → Parquet backend + joined table)":
                   ("collate", "--backend", "parquet", "--single-cells", "--overwrite")}


def memory_only(args: argparse.Namespace) -> int:
    """Peak RSS of the joined table for a 96- and a 384-well plate (``FULL['memory']`` sizes) from each
    input; written to the ``single_cells-memory`` section."""
    started = time.perf_counter()
    root = WORK / "single_cells-memory"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    log.write_text("")
    compile_sources(log)
    cyto = cytoprofile_bin()
    peaks: dict[str, dict[int, Run]] = {name: {} for name in ["collate (both backends)", *MEMORY_RUNS]}
    infos: dict[int, dict[str, Any]] = {}
    for wells in (96, 384):
        mws = root / f"mem{wells}"
        print(f"generating and collating {mws} …", flush=True)
        infos[wells] = generate(mws, wells=wells, **FULL["memory"])
        peaks["collate (both backends)"][wells] = Run(infos[wells]["collate_seconds"], infos[wells]["collate_rss"])
        for name, (command, *options) in MEMORY_RUNS.items():
            r = peaks[name][wells] = measure([cyto, command, mws, BATCH, PLATE, *options, "--quiet"], log)
            print(f"  {wells}-well {name}: {r.seconds:.2f} s, {mb(r.max_rss)}", flush=True)
    body = memory_report(infos, peaks, time.perf_counter() - started)
    print(body)
    if not args.no_write:
        write_section("single_cells-memory", body)
        print(f"wrote {RESULTS}")
    return 0


def memory_report(infos: dict[int, dict[str, Any]], peaks: dict[str, dict[int, Run]], seconds: float) -> str:
    """The ``single_cells-memory`` section of RESULTS.md."""
    p = FULL["memory"]
    lines = ["## Single cells: memory against the plate (`bench/single_cells.py --memory-only`)", "",
             f"{dt.date.today()}, {source_state()}. Reproduce: `python bench/single_cells.py --memory-only` (from the "
             "repository root with the project's venv).", "",
             f"Plates: 96 and 384 wells, {p['sites']} site per well, ~{p['cells']} cells a site, {p['features']} features "
             f"per compartment ({infos[96]['cells']:,} and {infos[384]['cells']:,} cells). Each run is started by a fresh "
             f"small launcher interpreter (`bench/_common.py` `measure()`); peak RSS of the run and its children. "
             f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.", "",
             "| run | 96-well peak RSS | 384-well peak RSS | 384 / 96 | target ≤ 1.3× | 96-well s | 384-well s |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for name, by in peaks.items():
        ratio = by[384].max_rss / by[96].max_rss
        verdict = "(context: collate alone)" if name.startswith("collate (") else verdict_at_most(ratio, TARGETS["memory_ratio"])
        lines.append(f"| {name} | {mb(by[96].max_rss)} | {mb(by[384].max_rss)} | {ratio:.2f}× | {verdict} | "
                     f"{by[96].seconds:.2f} | {by[384].seconds:.2f} |")
    lines += ["", f"Whole run: {seconds:.0f} s. The joined table is written in row groups of whole sites ending at "
              "2,048 rows (or 12 M values), and the Parquet backend's object tables in row groups of at most 1,024 rows, "
              "read two at a time: the rows held do not depend on the plate (tests/test_single_cells_memory.py counts them)."]
    return "\n".join(lines)


def bounds(contenders: dict[str, Contender]) -> list[str]:
    """What 10× against merge_single_cells from SQLite would need, against what reading SQLite costs at least."""
    merge, ours = contenders["pycytominer merge_single_cells (SQLite)"], contenders["ours, SQLite backend"]
    lines = ["", "Bounds from SQLite (same plate, same run): the readers below only read the three compartment tables, "
             "join and write nothing; no tool reading this file can take less."]
    for name in (ADBC_READ, C_READ):
        if name not in contenders:
            lines.append(f"- {name}: not measured (no C compiler or SQLite header)")
            continue
        c = contenders[name]
        lines.append(f"- {name}: {c.best:.2f} s, {_cpu(c):.2f} CPU s; merge_single_cells ÷ it: {merge.best / c.best:.1f}× "
                     f"(CPU {_cpu(merge) / max(_cpu(c), 1e-3):.1f}×); ours ÷ it: {ours.best / c.best:.1f}× "
                     f"(CPU {_cpu(ours) / max(_cpu(c), 1e-3):.1f}×)")
    if OUR_START in contenders and MERGE_START in contenders:
        ours_work = ours.best - contenders[OUR_START].best
        merge_work = merge.best - contenders[MERGE_START].best
        ours_cpu = _cpu(ours) - _cpu(contenders[OUR_START])
        merge_cpu = _cpu(merge) - _cpu(contenders[MERGE_START])
        lines.append(f"- without each tool's start (imports): merge_single_cells {merge_work:.2f} s ({merge_cpu:.2f} CPU s), "
                     f"ours {ours_work:.2f} s ({ours_cpu:.2f} CPU s): {merge_work / max(ours_work, 1e-3):.1f}× "
                     f"(CPU {merge_cpu / max(ours_cpu, 1e-3):.1f}×), the ratio larger plates tend to")
        if C_READ in contenders:
            c = contenders[C_READ]
            lines.append(f"- that work of merge_single_cells ÷ the C API's decoding alone: {merge_work / max(c.best, 1e-3):.1f}× "
                         f"(CPU {merge_cpu / max(_cpu(c), 1e-3):.1f}×): the ceiling of any reader of this file on large "
                         "plates, before it joins or writes anything")
            if OUR_START in contenders:
                target, floor = merge.best / TARGETS["merge_over_ours"], c.best + contenders[OUR_START].best
                lines.append(f"- 10× needs single-cells from SQLite in ≤ {target:.2f} s here; a Python command's start plus "
                             f"SQLite's own decoding already take {floor:.2f} s ({floor / target:.1f}× the budget"
                             f"{', so 10× is out of reach for any reader of this file' if floor > target else ''}), "
                             "before a value is joined or written")
    return lines


def _cpu(c: Contender) -> float:
    """CPU seconds (user + system) of a contender's fastest run."""
    return min(c.runs, key=lambda r: r.seconds).cpu


def _cytotable_python(args: argparse.Namespace) -> Path | None:
    """``--cytotable-python`` when given, else the bench venv (made on first use)."""
    if args.cytotable_python is not None:
        return Path(args.cytotable_python)
    return venv_python("cytotable", WORK / "cytotable-install.log")


def cytotable_only(args: argparse.Namespace) -> int:
    """CSV sites → one joined Parquet: ``collate --single-cells`` and ``single-cells`` against
    CytoTable's ``convert``, cells compared by identity; written to ``single_cells-cytotable``."""
    started = time.perf_counter()
    python = _cytotable_python(args)
    if python is None:
        print("CytoTable did not install; nothing to compare", flush=True)
        return 1
    root = WORK / "single_cells-cytotable"
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    log.write_text("")
    ws = root / "jump"
    print(f"generating and collating {ws} …", flush=True)
    info = generate(ws, **CYTOTABLE_ONLY)
    contenders: dict[str, Contender] = {}
    run = functools.partial(_run, contenders, log)
    compile_sources(log)
    cyto = cytoprofile_bin()
    ours = ws / "backend" / BATCH / PLATE / f"{PLATE}_single_cells.parquet"
    run("ours, collate --single-cells (CSV → Parquet backend + joined table)",
        [cyto, "collate", ws, BATCH, PLATE, "--backend", "parquet", "--single-cells", "--overwrite", "--quiet"])
    shutil.copy(ours, root / "ours-from-csv.parquet")
    run("ours, single-cells (from the Parquet backend)",
        [cyto, "single-cells", ws, BATCH, PLATE, "--backend", "parquet", "--quiet"])
    dest = root / "cytotable.parquet"
    shutil.rmtree(dest, ignore_errors=True)
    dest.unlink(missing_ok=True)
    run("CytoTable convert (CSV → joined Parquet)",
        [python, "-c", _CYTOTABLE, ws / "analysis" / BATCH / PLATE / "analysis", dest, root / "parsl-runinfo"])
    checks = {"CytoTable cellprofiler_csv": compare_cytotable(root / "ours-from-csv.parquet", dest),
              "collate --single-cells = single-cells": compare_merge(ours, root / "ours-from-csv.parquet")}
    info["bench_seconds"] = time.perf_counter() - started
    body = cytotable_report(info, contenders, checks)
    print(body)
    if not args.no_write:
        write_section("single_cells-cytotable", body)
        print(f"wrote {RESULTS}")
    return 0


def cytotable_report(info: dict[str, Any], contenders: dict[str, Contender], checks: dict[str, str]) -> str:
    """The ``single_cells-cytotable`` section of RESULTS.md."""
    p = info["params"]
    names = list(contenders)
    theirs = contenders[names[2]].best
    lines = [
        "## Single cells against CytoTable (`bench/single_cells.py --cytotable-only`)", "",
        f"{dt.date.today()}, {source_state()}. Reproduce: `python bench/single_cells.py --cytotable-only "
        "[--cytotable-python VENV/bin/python]` (CytoTable from PyPI in its own venv: its pins pull pandas < 3).", "",
        f"Plate: {info['sites']} sites, {info['cells']:,} cells, {p['features']:,} features per compartment, "
        f"{info['csv_bytes'] / 1e6:.0f} MB of CSV. Load average at the end: {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (shared machine: absolute times inflated, ratios from the same run).", "",
        "| contender | seconds | peak RSS | CytoTable ÷ this |", "|---|---|---|---|",
    ]
    for name, c in contenders.items():
        lines.append(f"| {name} | {c.best:.2f} | {mb(c.peak)} | {theirs / c.best:.1f}× |")
    lines += ["", "- CytoTable: `convert(preset='cellprofiler_csv', concat=True, join=True)`, a parsl "
              "ThreadPoolExecutor with 2 threads, DuckDB 1.4.4 with its sqlite/httpfs extensions from PyPI wheels.",
              f"- CytoTable ÷ ours, both from the CSVs: "
              f"{verdict_at_least(theirs / contenders[names[0]].best, TARGETS['cytotable_over_ours'])}",
              f"- CytoTable ÷ ours from the Parquet backend: "
              f"{verdict_at_least(theirs / contenders[names[1]].best, TARGETS['cytotable_over_ours'])}"]
    lines += [f"- check, {name}: {text}" for name, text in checks.items()]
    lines += ["", f"Whole run: {info['bench_seconds']:.0f} s. Two sites only, to keep the run within minutes: "
              "CytoTable's fixed start-up (parsl, DuckDB, one task per table) is a larger share of its time here "
              "than on a 16-site plate, so this ratio likely overstates the one at 16 sites."]
    return "\n".join(lines)


def report(args: argparse.Namespace, info: dict[str, Any], contenders: dict[str, Contender], checks: dict[str, str],
           memory: dict[int, Contender]) -> str:
    """The RESULTS.md section."""
    p = info["params"]
    ours = contenders["ours, Parquet backend"].best
    lines = [
        "## Single cells (`bench/single_cells.py`)", "",
        f"{dt.date.today()}, {source_state()}. Reproduce: `python bench/single_cells.py{' --quick' if args.quick else ' --full' if args.full else ''}` "
        "(from the repository root with the project's venv; CytoTable is installed into `bench/work/cytotable-venv` on "
        "the first run; add `--cosmicqc` for the coSMicQC comparison).", "",
        f"Plate: {info['sites']} sites, {info['cells']:,} cells, {p['features']:,} features per compartment "
        f"(collate of the CSVs into both backends: {info['collate_seconds']:.1f} s, {mb(info['collate_rss'])}). "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: absolute times are "
        "inflated, ratios come from the same run).", "",
        "| contender | seconds (runs) | CPU s | peak RSS | vs ours (Parquet) |", "|---|---|---|---|---|",
    ]
    for name, c in contenders.items():
        lines.append(f"| {name} | {c.best:.2f} ({runs_text(c)}) | {_cpu(c):.2f} | {mb(c.peak)} | {c.best / ours:.1f}× |")
    lines.append("")
    if "CytoTable convert (CSV)" not in contenders:
        lines.append("- CytoTable: not run here (`--no-cytotable`); its ratio is not measured in this section.")
    else:
        ratio = contenders["CytoTable convert (CSV)"].best / ours
        lines.append("- CytoTable ran with a parsl ThreadPoolExecutor (2 threads) and DuckDB 1.4.4 with its sqlite/httpfs "
                     "extensions from PyPI wheels (this machine cannot download DuckDB extensions at run time).")
        lines.append(f"- CytoTable convert ÷ ours: {verdict_at_least(ratio, TARGETS['cytotable_over_ours'])}")
    merge_c = contenders["pycytominer merge_single_cells (SQLite)"]
    merge_s = merge_c.best
    merge = merge_s / contenders["ours, SQLite backend"].best
    lines.append(f"- merge_single_cells ÷ ours, both from SQLite: {verdict_at_least(merge, TARGETS['merge_over_ours'])}; "
                 f"in CPU seconds: {_cpu(merge_c) / max(_cpu(contenders['ours, SQLite backend']), 1e-3):.1f}×")
    lines.append(f"- merge_single_cells ÷ ours from the Parquet backend: {verdict_at_least(merge_s / ours, TARGETS['merge_over_ours'])}")
    extra = contenders["collate --single-cells (same pass)"].best - contenders["collate (SQLite backend)"].best
    if extra > 0.05:
        lines.append(f"- cost of the joined table inside collate: {extra:.2f} s over a plain collate "
                     f"(merge_single_cells ÷ that: {verdict_at_least(merge_s / extra, TARGETS['merge_over_ours'])})")
    else:
        lines.append(f"- cost of the joined table inside collate: not measured in this run (the plain collate took "
                     f"{-extra:.2f} s longer than the one with --single-cells: the machine's load varied)")
    m96, m384 = memory[96].peak, memory[384].peak
    lines.append(f"- peak RSS 384-well ÷ 96-well ({(QUICK if args.quick else FULL)['memory']['features']} features): "
                 f"{mb(m384)} / {mb(m96)} = {verdict_at_most(m384 / m96, TARGETS['memory_ratio'])}")
    for name, text in checks.items():
        lines.append(f"- check, {name}: {text}")
    lines += bounds(contenders)
    lines += ["", f"Whole benchmark run: {info['bench_seconds']:.0f} s (plates made by an earlier run are reused; "
              "cytoprofile's modules byte-compiled first, as an install has them). Peak RSS and CPU come from `bench/_common.py`'s "
              "`measure()`: each run is started by a fresh small launcher interpreter (a command started straight from "
              "this script would report the script's own RSS as its peak when that is larger)."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_merge":
        _merge(sys.argv[2], sys.argv[3])
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_adbc_read":
        _adbc_read(sys.argv[2], sys.argv[3:])
        sys.exit(0)
    sys.exit(main())
