"""Builders for the ExportToDatabase tests: a CSV workspace and its ExportToDatabase twin, row counts
straight from the SQLite files, and one collated plate with its report."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd

from cytoprofile.exportdb import collate_export
from cytoprofile.synth import synth, write_export_database

__all__ = ["BATCH", "LONG", "assert_accounted", "backend_rows", "csv_workspace", "db_workspace", "read_profiles",
           "reported_rows", "run_export", "sql_rows"]

BATCH = "B1"
LONG = "AreaShape_CompactnessOfTheCorrectedDNAImageAfterIlluminationAndBackgroundCorrection"


def csv_workspace(root: Path, plates: tuple[str, ...] = ("P1",), *, long_name: bool = True) -> Path:
    """A small synthetic CSV workspace; one Cells feature renamed past CellProfiler's 64-character limit."""
    ws = root / "csv"
    synth(ws, batch=BATCH, plates=plates, well_subset=3, sites=2, cells=15, features=10, seed=3)
    if long_name:
        for path in ws.glob(f"analysis/{BATCH}/*/analysis/*/Cells.csv"):
            header, rest = path.read_text().split("\n", 1)
            names = header.split(",")
            assert "AreaShape_Compactness" in names
            path.write_text(",".join(LONG if n == "AreaShape_Compactness" else n for n in names) + "\n" + rest)
    return ws


def db_workspace(root: Path, csv_ws: Path, plate: str, **kw: Any) -> tuple[Path, list[str]]:
    ws = root / "db"
    files = write_export_database(csv_ws, ws / "analysis" / BATCH / plate, batch=BATCH, plates=(plate,), **kw)
    return ws, files


def read_profiles(path: str) -> pd.DataFrame:
    return pd.read_csv(path)


def sql_rows(files: list[str]) -> dict[str, int]:
    """Rows per object set and images, counted straight from the files (independent of cytoprofile)."""
    out: dict[str, int] = {}
    for f in files:
        conn = sqlite3.connect(f)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for t in names:
                cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
                if t.endswith("Per_Image"):
                    out["Image"] = out.get("Image", 0) + conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                for c in cols:
                    if c.endswith("_Number_Object_Number"):
                        obj = c[: -len("_Number_Object_Number")]
                        n = conn.execute(f'SELECT COUNT(*) FROM "{t}" WHERE "{c}" IS NOT NULL').fetchone()[0]
                        out[obj] = out.get(obj, 0) + n
        finally:
            conn.close()
    return out


def backend_rows(sqlite_path: str) -> dict[str, int]:
    conn = sqlite3.connect(sqlite_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'cytoprofile%'")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def reported_rows(report: dict[str, Any]) -> dict[str, int]:
    """Rows the report names as not in the backend: dropped by the reader, other plates, quarantined sites."""
    section = report["export_database"]
    out: dict[str, int] = {}
    for d in section["dropped"]:
        out[d["table"]] = out.get(d["table"], 0) + d["rows"]
    for per in section["other_plates"].values():
        for t, n in per.items():
            out[t] = out.get(t, 0) + n
    for site in report["sites"]:
        if site["status"] != "ok":
            for t, n in section["sites"][site["site"]]["rows"].items():
                out[t] = out.get(t, 0) + n
    return out


def assert_accounted(files: list[str], backends: list[dict[str, Any]]) -> None:
    """Rows in the files = rows in the backend(s) + rows named in the report(s)."""
    in_files = sql_rows(files)
    accounted: dict[str, int] = {}
    for b in backends:
        for t, n in backend_rows(b["sqlite"]).items():
            accounted[t] = accounted.get(t, 0) + n
    # rows left for other plates are in those plates' backends when every plate is collated
    plates_done = {b["report"]["plate"] for b in backends}
    for b in backends:
        report = b["report"]
        for t, n in reported_rows(report).items():
            accounted[t] = accounted.get(t, 0) + n
        for other, per in report["export_database"]["other_plates"].items():
            if other in plates_done:
                for t, n in per.items():
                    accounted[t] -= n
    accounted.pop("Per_Object", None)
    assert {t: n for t, n in in_files.items() if n} == {t: n for t, n in accounted.items() if n}


def run_export(ws: Path, plate: str, **kw: Any) -> dict[str, Any]:
    result = collate_export(ws, BATCH, plate, **kw)
    assert result.status == "done", result.message
    return {"result": result, "sqlite": result.outputs["sqlite"],
            "report": json.loads(Path(result.outputs["report"]).read_text())}
