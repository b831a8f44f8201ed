"""Ingest invariants: order independence, row conservation, crash safety."""

from __future__ import annotations

import gzip
import io as io_module
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytoprofile import io
from cytoprofile.cli import main
from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.ingest import discover_sites, order_by_key, plan_schema, scan_sites
from cytoprofile.synth import synth
from cytoprofile.vocabulary import normalise_well

from . import faults
from .conftest import link_sites

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    ws = tmp_path_factory.mktemp("base")
    synth(ws, plates=["P1"], wells=96, well_subset=3, sites=2, cells=6, features=6, seed=11)
    result = collate_plate(ws, "BATCH1", "P1")
    return ws, io.read_table(result.outputs["profiles"])


def _copy_with_column_order(src: Path, dest: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for site in sorted((src / "analysis/BATCH1/P1/analysis").iterdir()):
        out = dest / "analysis/BATCH1/P1/analysis" / site.name
        out.mkdir(parents=True)
        for csv in site.iterdir():
            df = pd.read_csv(csv)
            df[list(rng.permutation(df.columns))].to_csv(out / csv.name, index=False)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_csv_column_order_changes_nothing(base: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    ws, expected = base
    shuffled = tmp_path_factory.mktemp("shuffled")
    _copy_with_column_order(ws, shuffled, seed)
    result = collate_plate(shuffled, "BATCH1", "P1")
    got = io.read_table(result.outputs["profiles"])
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)
    # the Image rows differ only by file bytes (TableNumber); object rows are conserved
    for table in COMPARTMENTS:
        assert result.report["tables"][table]["rows_in"] == result.report["tables"][table]["rows_out"]  # type: ignore[index]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)))
def test_site_order_changes_nothing(base: tuple[Path, pd.DataFrame], order: list[int]) -> None:
    ws, _ = base
    sites = discover_sites(ws / "analysis/BATCH1/P1/analysis")
    shuffled = [sites[i] for i in order]
    strata = ("Metadata_Plate", "Metadata_Well")
    a = scan_sites(sites, plate="P1", strata=strata)
    b = scan_sites(shuffled, plate="P1", strata=strata)
    assert plan_schema(a, plate="P1", strata=strata) == plan_schema(b, plate="P1", strata=strata)
    assert [s.name for s in order_by_key(a)] == [s.name for s in order_by_key(b)]


@given(cells=st.lists(st.integers(0, 7), min_size=4, max_size=4))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rows_are_conserved(tmp_path_factory: pytest.TempPathFactory, cells: list[int]) -> None:
    ws = tmp_path_factory.mktemp("rows")
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=3, features=4, seed=2)
    sites = sorted((ws / "analysis/BATCH1/P1/analysis").iterdir())
    for site, n in zip(sites, cells):  # rewrite each site with exactly n cells
        for c in COMPARTMENTS:
            df = pd.read_csv(site / f"{c}.csv")
            df = pd.concat([df.head(1)] * n, ignore_index=True) if n and len(df) else df.head(0)
            df["ObjectNumber"] = range(1, len(df) + 1)
            for column in df.columns:  # object k of each compartment is one cell's, as CellProfiler links them
                if column.startswith("Parent_"):
                    df[column] = range(1, len(df) + 1)
                elif column.startswith("Children_") and column.endswith("_Count"):
                    df[column] = 1
            df.to_csv(site / f"{c}.csv", index=False)
        image = pd.read_csv(site / "Image.csv")  # Image.csv counts what the object tables hold
        image[[f"Count_{c}" for c in COMPARTMENTS]] = n
        image.to_csv(site / "Image.csv", index=False)
    result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    conn = sqlite3.connect(result.outputs["sqlite"])
    for c in COMPARTMENTS:
        assert conn.execute(f"SELECT COUNT(*) FROM {c}").fetchone()[0] == sum(cells)
    conn.close()
    profiles = io.read_table(result.outputs["profiles"])
    assert profiles["Metadata_Object_Count"].sum() == sum(cells)
    assert profiles["Metadata_Site_Count"].tolist() == [2, 2]


def _tables(sqlite: Path) -> dict[str, pd.DataFrame]:
    conn = sqlite3.connect(sqlite)
    # cytoprofile_run holds the build's generation id: different on every build by design
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0] != "cytoprofile_run"]
    out = {n: pd.read_sql(f"SELECT * FROM {n}", conn).sort_values(["TableNumber", "ImageNumber"] + (["ObjectNumber"] if n != "Image" else [])).reset_index(drop=True) for n in names}
    conn.close()
    return out


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.6])
def test_killed_run_then_rerun_equals_uninterrupted(tmp_path: Path, delay: float) -> None:
    args = dict(plates=["P1"], wells=96, well_subset=24, sites=3, cells=60, features=60, seed=5)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    synth(clean, **args)  # type: ignore[arg-type]
    synth(killed, **args)  # type: ignore[arg-type]
    reference = collate_plate(clean, "BATCH1", "P1", backend=("sqlite", "parquet"))
    cmd = [sys.executable, "-m", "cytoprofile", "collate", str(killed), "BATCH1", "P1", "--backend", "sqlite",
           "--backend", "parquet", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = killed / "backend/BATCH1/P1"
    finals = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    # nothing half-written under a final name: either no report (unfinished) or everything
    if "P1.report.json" not in finals:
        for name in finals:
            assert name in {"P1.sqlite", "P1.csv", "P1.csv.generation", "P1_Image.parquet", "P1_Cells.parquet",
                            "P1_Cytoplasm.parquet", "P1_Nuclei.parquet"}
    assert subprocess.run(cmd, check=False).returncode == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "P1.csv").read_bytes() == Path(reference.outputs["profiles"]).read_bytes()
    ours, ref = _tables(out / "P1.sqlite"), _tables(Path(reference.outputs["sqlite"]))
    assert ours.keys() == ref.keys()
    for name in ref:
        pd.testing.assert_frame_equal(ours[name], ref[name])


# --- CellProfiler exports in the wild and hostile input: every shape ingests or is named ---------


def _collate(ws: Path, plate_dir: Path, **options: object) -> Any:
    result = collate_plate(ws, faults.BATCH, faults.PLATE, **options)  # type: ignore[arg-type]
    assert result.status == "done", result.message
    faults.assert_rows_accounted(result, plate_dir)
    return result


def _sites(result: Any) -> dict[str, dict[str, Any]]:
    return {s["site"]: s for s in result.report["sites"]}


def _columns(sqlite: str, table: str) -> list[str]:
    conn = sqlite3.connect(sqlite)
    try:
        return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()


def _query(sqlite: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(sqlite)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("identical", [True, False])
@pytest.mark.parametrize(("table", "columns"), [
    ("Cells", ["Location_Center_X", "Location_Center_Y", "Number_Object_Number"]),
    ("Nuclei", ["AreaShape_Area"]),
    ("Image", ["Granularity_1_DNA"]),
])
def test_duplicate_columns_are_kept_or_renamed_never_quarantined(tmp_path: Path, table: str, columns: list[str], identical: bool) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir)
    faults.duplicate_columns(target, table, columns, identical=identical)
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    assert all(s["status"] == "ok" for s in result.report["sites"])
    dupes = [d for d in result.report["duplicate_columns"] if d["site"] == target.name]
    assert sorted(d["column"] for d in dupes) == sorted(columns)
    assert all(d["identical"] is identical for d in dupes)
    stored = _columns(result.outputs["sqlite"], table)
    prefix = "" if table == "Image" else f"{table}_"
    for column in columns:
        assert f"{prefix}{column}" in stored
        assert (f"{prefix}{column}_2" in stored) is not identical
    if not identical:
        rows = _query(result.outputs["sqlite"], f'SELECT "{prefix}{columns[0]}", "{prefix}{columns[0]}_2" FROM "{table}" '
                                                 f'WHERE "{prefix}{columns[0]}_2" IS NOT NULL')
        assert rows and all(a != b for a, b in rows)
        schema = pq.read_schema(Path(result.outputs["parquet"]).parent / f"P1_{table}.parquet")
        assert f"{prefix}{columns[0]}_2" in schema.names


_JUMP_TABLES = ["Cells_Cellpose3", "Cytoplasm_BBCN_First", "preNuclei_Cellpose3", "Cells_Donut_Large", "Nuclei_Cellpose3",
                *[f"Objects_{i:02d}" for i in range(17)]]


@pytest.mark.parametrize(("header_only", "count", "ok"), [
    (False, True, True),     # every table full, Count_ agrees
    (True, "0", True),       # header-only where Image.csv says 0 objects
    (True, None, True),      # header-only, no Count_ column
    (True, "3", False),      # header-only but Image.csv says 3: a lost file
])
def test_many_object_tables_each_a_table(tmp_path: Path, header_only: bool, count: object, ok: bool) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1)
    for folder in sorted(plate_dir.iterdir()):
        for i, name in enumerate(_JUMP_TABLES):
            empty = header_only and i % 2 == 1
            faults.add_object_table(folder, name, rows=0 if empty else None, count=not (empty and count is None))
            if empty and isinstance(count, str):
                faults.set_image_value(folder, f"Count_{name}", count)
    if not ok:  # every site disagrees with its Count_: a plate with no good site fails, naming why
        with pytest.raises(InputError, match=r"0 of 2 site.*0 rows.*says 3"):
            _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
        return
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    stored = {r[0] for r in _query(result.outputs["sqlite"], "SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(_JUMP_TABLES) <= stored
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    nuclei = _query(result.outputs["sqlite"], "SELECT COUNT(*) FROM Nuclei")[0][0]
    assert _query(result.outputs["sqlite"], f'SELECT COUNT(*) FROM "{_JUMP_TABLES[0]}"')[0][0] == nuclei
    if header_only:
        assert _query(result.outputs["sqlite"], f'SELECT COUNT(*) FROM "{_JUMP_TABLES[1]}"')[0][0] == 0


@pytest.mark.parametrize("name", ["Cells - Copy", "PH3"])
@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",)])
def test_table_of_some_sites_is_stored_for_them(tmp_path: Path, name: str, backend: tuple[str, ...]) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=3)
    lucky = faults.site(plate_dir, "A02", 2)
    faults.add_object_table(lucky, name, like="Cells", count=name == "PH3")
    result = _collate(tmp_path, plate_dir, backend=backend)
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    partial = result.report["partial_tables"][name]
    assert len(partial["sites_without"]) == 5 and lucky.name not in partial["sites_without"]
    cells = _sites(result)[lucky.name]["rows"]["Cells"]
    assert _sites(result)[lucky.name]["rows"][name] == cells
    # a table that is a compartment is required: sites lacking it are quarantined
    again = _collate(tmp_path, plate_dir, backend=backend, compartments=("Cells", name), overwrite=True)
    quarantined = [s for s in again.report["sites"] if s["status"] != "ok"]
    assert len(quarantined) == 5 and all(f"{name}.csv is missing" in s["reason"] for s in quarantined)
    profiles = io.read_table(again.outputs["profiles"])
    assert profiles["Metadata_Well"].tolist() == ["A02"]
    assert any(c.startswith(f"{name}_") for c in profiles.columns)


@pytest.mark.parametrize("variant", ["upper", "gzip", "gzip-upper", "prefix", "prefix-gzip", "lower-experiment", "prefix-option"])
def test_file_name_variants_give_the_same_plate(tmp_path: Path, variant: str) -> None:
    faults.small_plate(tmp_path / "clean", wells=2)
    plate_dir = faults.small_plate(tmp_path / "ws", wells=2)
    options: dict[str, object] = {}
    for folder in sorted(plate_dir.iterdir()):
        if variant == "upper":
            faults.rename_files(folder, lambda n: n.upper())
        elif variant.startswith("gzip"):
            faults.rename_files(folder, (lambda n: n.upper() + ".GZ") if variant == "gzip-upper" else (lambda n: n + ".gz"), compress=True)
        elif variant.startswith("prefix"):
            gz = variant == "prefix-gzip"
            faults.rename_files(folder, lambda n, gz=gz: f"MyExpt_{n}" + (".gz" if gz else ""), compress=gz)  # type: ignore[misc]
            if variant == "prefix-option":  # a stray file hides the prefix: the option names it
                (folder / "notes.csv").write_text("a,b\n1,2\n")
                options["file_prefix"] = "MyExpt_"
        (folder / ("MyExpt_Experiment.csv" if variant.startswith("prefix") else "experiment.csv")).write_text(
            "Key,Value\nCellProfiler_Version,4.2.6\nPipeline_Pipeline,\"a\nmulti-line pipeline\"\n")
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    if variant == "prefix-option":
        with pytest.raises(InputError, match="pass --file-prefix"):
            collate_plate(tmp_path / "ws", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir, **options)
    sites = _sites(result)
    if variant == "prefix-option":
        assert all(s["files"]["notes.csv"]["not_stored"].startswith("does not start with") for s in sites.values())
    assert {s["status"] for s in sites.values()} == {"ok"}
    assert Path(result.outputs["profiles"]).read_bytes() == Path(clean.outputs["profiles"]).read_bytes()
    experiment = [f for s in sites.values() for n, f in s["files"].items() if "xperiment" in n]
    assert len(experiment) == 4 and all(f["rows"] == 2 and f["not_stored"] for f in experiment)
    for table in ("Image", "Cells", "Cytoplasm", "Nuclei"):
        ours = _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        assert ours == _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")


def test_object_csv_with_two_row_header_is_split_per_compartment(tmp_path: Path) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    for folder in sorted(plate_dir.iterdir()):
        faults.to_object_csv(folder)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir)
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    # Cytoplasm's links and Cells' own ObjectNumber are carried into every compartment
    for table in ("Cells", "Cytoplasm", "Nuclei"):
        ours = _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        assert ours == _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")
    assert Path(result.outputs["profiles"]).read_bytes() == Path(clean.outputs["profiles"]).read_bytes()
    assert all(f["tables"] == ["Cells", "Cytoplasm", "Nuclei"] for s in result.report["sites"] for n, f in s["files"].items()
               if n == "object.csv")


def test_data_a_object_csv_gives_the_munged_tables(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "cytominer-database-fixtures"
    plate_dir = link_sites(tmp_path, "B", "P", {name: src / "data_a" / name for name in ("1", "2")})
    result = collate_plate(tmp_path, "B", "P", count_check="warn")
    assert result.status == "done"
    faults.assert_rows_accounted(result, plate_dir)
    sites = _sites(result)
    assert {s["status"] for s in sites.values()} == {"ok"}
    assert all("Count_Cells says 542" in " ".join(s["warnings"]) or "Count_Cells" in " ".join(s["warnings"]) for s in sites.values())
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        for name in ("1", "2"):
            image_numbers = conn.execute("SELECT TableNumber FROM Image WHERE Metadata_Site IS NOT NULL").fetchall()
            assert image_numbers
            table_number = zlib.crc32((src / "data_a" / name / "image.csv").read_bytes()) & 0xFFFFFFFF
            for table in ("Cells", "Cytoplasm", "Nuclei"):
                want = pd.read_csv(src / "data_a_munged" / name / f"{table}.csv")
                got = pd.read_sql(f"SELECT * FROM {table} WHERE TableNumber = {table_number} ORDER BY ImageNumber, ObjectNumber", conn)
                want = want.rename(columns={c: c if c in ("ImageNumber", "ObjectNumber") else f"{table}_{c}" for c in want.columns})
                assert list(got.columns) == ["TableNumber", *canonical(want.columns)]
                want = want.sort_values(["ImageNumber", "ObjectNumber"]).reset_index(drop=True)
                pd.testing.assert_frame_equal(got[list(want.columns)], want, check_dtype=False)
    finally:
        conn.close()
    try:  # the trimmed fixture fails the default count check: no good site is left
        strict = collate_plate(tmp_path, "B", "P", overwrite=True)
    except InputError:
        return
    assert strict.status == "failed" or {s["status"] for s in strict.report["sites"]} == {"quarantined"}  # type: ignore[index]


def canonical(columns: Any) -> list[str]:
    keys = [c for c in ("ImageNumber", "ObjectNumber") if c in columns]
    return keys + sorted(c for c in columns if c not in keys)


@pytest.mark.parametrize("mode", ["error", "warn", "off"])
@pytest.mark.parametrize("shape", ["cut-at-line", "header-only", "compartments-disagree", "parent-missing", "parent-other-image"])
def test_count_check_rows_against_image_counts_and_parent_links(tmp_path: Path, shape: str, mode: str) -> None:
    plate_dir = faults.small_plate(tmp_path, cells=8)
    target = faults.site(plate_dir, "A02", 1)
    if shape == "cut-at-line":
        faults.drop_rows(target, "Cells", 2)
        faults.drop_rows(target, "Cytoplasm", 2)  # Parent links stay valid: only the count can tell
        faults.drop_rows(target, "Nuclei", 2)
    elif shape == "header-only":
        for table in ("Cells", "Cytoplasm", "Nuclei"):
            faults.drop_rows(target, table, len(faults.read_rows(target / f"{table}.csv")) - 1)
    elif shape == "compartments-disagree":
        faults.drop_rows(target, "Nuclei", 1)
        faults.set_image_value(target, "Count_Nuclei", str(len(faults.read_rows(target / "Nuclei.csv")) - 1))
    elif shape == "parent-missing":
        faults.set_object_value(target, "Cytoplasm", "Parent_Cells", "999")
    else:
        faults.set_object_value(target, "Cells", "Parent_Nuclei", "0")  # 0 = no parent: valid
        faults.set_object_value(target, "Cytoplasm", "ImageNumber", "1", row=1)
    result = _collate(tmp_path, plate_dir, count_check=mode)
    entry = _sites(result)[target.name]
    others = [s for s in result.report["sites"] if s["site"] != target.name]
    assert all(s["status"] == "ok" for s in others)
    if shape == "parent-other-image":
        assert entry["status"] == "quarantined" and "ImageNumber 1, absent from Image.csv" in entry["reason"]
        return
    if mode == "error":
        assert entry["status"] == "quarantined"
        reason = entry["reason"]
        if shape == "parent-missing":
            assert "Parent_Cells 999" in reason and "no such object" in reason
        elif shape == "compartments-disagree":
            assert "Parent_Nuclei" in reason and "no such object" in reason
        else:  # both numbers named
            found, said = re.search(r"has (\d+) rows for ImageNumber \d+ but Image.csv Count_\w+ says (\d+)", reason).groups()  # type: ignore[union-attr]
            assert int(found) == (0 if shape == "header-only" else int(said) - 2)
    else:
        assert entry["status"] == "ok"
        assert bool(entry.get("warnings")) is (mode == "warn")


@pytest.mark.parametrize("written", ["5.0000001", "4.9999999", "5.5"])
def test_fractional_count_is_named_as_written(tmp_path: Path, written: str) -> None:
    """A count off a whole number quarantines the site naming it as Image.csv holds it (never rounded to 5)."""
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=2, cells=5)
    target = faults.site(plate_dir)
    faults.drop_rows(target, "Cells", len(faults.read_rows(target / "Cells.csv")) - 6)  # 5 rows stay
    faults.set_image_value(target, "Count_Cells", written)
    entry = _sites(_collate(tmp_path, plate_dir, count_check="error"))[target.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"].endswith(f"Count_Cells says {written}"), entry["reason"]


@pytest.mark.parametrize("header", ['x"; DROP TABLE Image; --', 'a"b', '"', 'say "hi"'])
@pytest.mark.parametrize("where", ["end", "middle"])
def test_quote_in_object_header_is_read_not_emptied(tmp_path: Path, header: str, where: str) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1, cells=6)
    target = faults.site(plate_dir)
    rows = faults.read_rows(target / "Cells.csv")
    at = len(rows[0]) if where == "end" else 3
    for i, row in enumerate(rows):
        row.insert(at, header if i == 0 else "2.5")
    (target / "Cells.csv").write_bytes("".join(",".join(r) + "\n" for r in rows).encode())
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    n = len(rows) - 1
    assert entry["status"] == "ok" and entry["rows"]["Cells"] == n > 0
    column = f"Cells_{header}"
    assert column in _columns(result.outputs["sqlite"], "Cells")
    assert _query(result.outputs["sqlite"], f'SELECT COUNT(*) FROM Cells WHERE "{column.replace(chr(34), chr(34) * 2)}" = 2.5')[0][0] == n
    assert _query(result.outputs["sqlite"], "SELECT COUNT(*) FROM Image")[0][0] == 1


def test_quoted_body_rows_must_match_lines(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=2, cells=6)
    target = faults.site(plate_dir)
    raw = (target / "Cells.csv").read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b",", b',"', 1).rstrip(b"\n") + b"\n"  # an unclosed quote swallows the rest of the file
    (target / "Cells.csv").write_bytes(b"".join(raw))
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined" and "Cells.csv" in entry["reason"]


@pytest.mark.parametrize(("column", "value"), [("Granularity_1_DNA", "abc"), ("Count_Cells", "n/a"), ("ImageQuality_FocusScore_DNA", "1.2.3"),
                                               ("Threshold_FinalThreshold_Cells", "2021-01-01")])
@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",)])
def test_non_number_in_image_measurement_quarantines_and_column_stays_numeric(tmp_path: Path, column: str, value: str,
                                                                              backend: tuple[str, ...]) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 2)
    faults.set_image_value(target, column, value)
    result = _collate(tmp_path, plate_dir, backend=backend)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined"
    assert f"line 2, column {column}" in entry["reason"] and value in entry["reason"] and entry["file"].endswith("Image.csv")
    if "sqlite" in backend:
        types = {r[0] for r in _query(result.outputs["sqlite"], f'SELECT typeof("{column}") FROM Image')}
        assert types <= {"real", "integer"}
        declared = {r[1]: r[2] for r in _query(result.outputs["sqlite"], "PRAGMA table_info(Image)")}
        assert declared[column] in ("FLOAT", "INTEGER")
    else:
        field = pq.read_schema(Path(result.outputs["parquet"])).field(column)
        assert str(field.type) in ("double", "int64")
    profiles = io.read_table(result.outputs["profiles"])
    assert profiles["Metadata_Site_Count"].tolist() == [2, 1]


def _mutate_duplicate(plate_dir: Path, shape: str) -> tuple[str, str]:
    """Apply a duplicate-key shape; returns (the site expected to be refused, a word of its reason)."""
    target = faults.site(plate_dir, "A02", 1)
    if shape == "object-row":
        faults.repeat_row(target, "Nuclei.csv")
        return target.name, "appears 2 times"
    if shape == "image-row":
        faults.repeat_row(target, "Image.csv")
        return target.name, "rows with ImageNumber"
    if shape == "symlink":
        faults.link_twice(plate_dir, target, "P1-A02-9")
        return "P1-A02-9", "reached twice through a link"
    if shape == "copy":
        faults.copy_site(plate_dir, target, "P1-A02-9")
        return "P1-A02-9", "a copy of site P1-A02-1 (identical Image.csv and files)"
    if shape == "other-plate":
        faults.set_image_value(target, "Metadata_Plate", "P2")
        return target.name, "names plate 'P2'"
    if shape == "empty-plate":
        faults.set_image_value(target, "Metadata_Plate", "")
        return target.name, "Metadata_Plate is empty in data row 1"
    if shape == "empty-well":
        faults.set_image_value(target, "Metadata_Well", "")
        return target.name, "Metadata_Well is empty"
    if shape == "trailing-comma-object":
        faults.trailing_comma(target, "Cells.csv")
        return target.name, "has no name (a trailing comma?)"
    faults.trailing_comma(target, "Image.csv")
    return target.name, "has no name (a trailing comma?)"


@pytest.mark.parametrize("shape", ["object-row", "image-row", "symlink", "copy", "other-plate", "empty-plate", "empty-well",
                                   "trailing-comma-object", "trailing-comma-image"])
def test_duplicate_keys_and_foreign_sites_are_refused(tmp_path: Path, shape: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    refused, reason = _mutate_duplicate(plate_dir, shape)
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    entry = _sites(result)[refused]
    assert entry["status"] == "quarantined" and reason in entry["reason"], entry["reason"]
    assert [s["site"] for s in result.report["sites"] if s["status"] != "ok"] == [refused]


@pytest.mark.parametrize("changed", ["Cells.csv", "Nuclei.csv", "a file more"])
def test_a_copied_site_whose_other_files_differ_is_refused_with_its_original(tmp_path: Path, changed: str) -> None:
    """``PLATE-A02-1 (rerun)`` beside ``PLATE-A02-1``, the same Image.csv but other objects: which is right is
    unknown, so both are quarantined (not the later one alone, keeping whichever sorts first), each naming the other."""
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 1)
    copy = plate_dir / f"{target.name} (rerun)"
    faults.copy_site(plate_dir, target, copy.name)
    if changed == "a file more":
        (copy / "Speckles.csv").write_text("ImageNumber,ObjectNumber,AreaShape_Area\n")
    else:
        rows = faults.read_rows(copy / changed)
        rows[1][-1] = str(float(rows[1][-1]) + 1)
        faults.write_rows(copy / changed, rows)
    result = _collate(tmp_path, plate_dir)
    sites = _sites(result)
    for name, other in ((target.name, copy.name), (copy.name, target.name)):
        assert sites[name]["status"] == "quarantined", sites[name]
        assert f"identical to site {other}'s but other files differ" in sites[name]["reason"]
    assert [s["site"] for s in result.report["sites"] if s["status"] != "ok"] == sorted([target.name, copy.name])


@pytest.mark.parametrize("column", ["ObjectNumber", "ImageNumber", "Parent_Nuclei"])
@pytest.mark.parametrize("value", ["1.5", str(2**63), str(2**63 + 7), str(2**53 + 1), "-1", "1e400", "x"])
def test_keys_are_integers_never_rounded(tmp_path: Path, column: str, value: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 2)
    faults.set_object_value(target, "Cells", column, value, row=2)
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined"
    assert f"line 3: {column} {value!r} is not an integer key" in entry["reason"] or (column == "ImageNumber" and value == "x"), entry["reason"]


@pytest.mark.parametrize("column", ["ObjectNumber", "ImageNumber", "Parent_Nuclei"])
def test_an_empty_key_or_link_quarantines_naming_its_line(tmp_path: Path, column: str) -> None:
    """An empty ``Parent_Nuclei`` is no link CellProfiler writes (it writes 0): before, it was stored as NULL
    without a word and the cell fell out of every join."""
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 2)
    faults.set_object_value(target, "Cells", column, "", row=2)
    entry = _sites(_collate(tmp_path, plate_dir, backend=("sqlite", "parquet")))[target.name]
    assert entry["status"] == "quarantined"
    assert f"Cells.csv line 3: {column} is empty" in entry["reason"], entry["reason"]


def test_integral_key_text_is_accepted_exactly(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1)
    target = faults.site(plate_dir)
    rows = faults.read_rows(target / "Nuclei.csv")
    big = 2**53
    rows[1][rows[0].index("ObjectNumber")] = str(big)
    faults.write_rows(target / "Nuclei.csv", rows)
    faults.set_object_value(target, "Cells", "Parent_Nuclei", f"{big}.0")
    faults.set_object_value(target, "Cytoplasm", "Parent_Nuclei", str(big))
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    assert _sites(result)[target.name]["status"] == "ok"
    assert _query(result.outputs["sqlite"], "SELECT MAX(ObjectNumber), typeof(MAX(ObjectNumber)) FROM Nuclei")[0] == (big, "integer")
    table = pq.read_table(Path(result.outputs["parquet"]).parent / "P1_Nuclei.parquet")
    assert max(table.column("ObjectNumber").to_pylist()) == big


def test_broken_link_site_is_named(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path)
    faults.broken_link(plate_dir, "P1-A03-1")
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)["P1-A03-1"]
    assert entry["status"] == "quarantined" and "broken link" in entry["reason"] and entry["files"] == {}


@pytest.mark.parametrize("at", [1, 3, -1])
@pytest.mark.parametrize("table", ["Cells", "Nuclei"])
def test_blank_line_in_object_csv_is_skipped(tmp_path: Path, at: int, table: str) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    target = faults.site(plate_dir, "A01", 2)
    rows = faults.read_rows(target / f"{table}.csv")
    faults.insert_blank_line(target, table, at=len(rows) if at == -1 else at)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir)
    assert _sites(result)[target.name]["status"] == "ok"
    assert _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3") == \
        _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")


@pytest.mark.parametrize(("image_well", "folder"), [("A1", "P1-A1-1"), ("a01", "P1-A01-1"), ("r01c01", "P1-r01c01-1"),
                                                     ("A01", "site_0001"), (None, "P1-r01c01-1"), (None, "P1-A1-1")])
def test_well_names_are_normalised(tmp_path: Path, image_well: str | None, folder: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 1)
    if image_well is None:
        image = pd.read_csv(target / "Image.csv").drop(columns=["Metadata_Well", "Metadata_Plate", "Metadata_Site"])
        image.to_csv(target / "Image.csv", index=False)
    else:
        faults.set_image_value(target, "Metadata_Well", image_well)
    target.rename(plate_dir / folder)
    result = _collate(tmp_path, plate_dir)
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    profiles = io.read_table(result.outputs["profiles"])
    assert profiles["Metadata_Well"].tolist() == ["A01", "A02"]
    assert profiles["Metadata_Site_Count"].tolist() == [2, 2]
    wells = {r[0] for r in _query(result.outputs["sqlite"], "SELECT Metadata_Well FROM Image")}
    assert wells == {"A01", "A02"}


def test_folder_not_named_plate_well_site_needs_the_well_in_image_csv(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 1)
    pd.read_csv(target / "Image.csv").drop(columns=["Metadata_Well"]).to_csv(target / "Image.csv", index=False)
    target.rename(plate_dir / "site_0001")
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)["site_0001"]
    assert entry["status"] == "quarantined" and "not PLATE-WELL-SITE" in entry["reason"]


@pytest.mark.parametrize("real", ["jump", "data_b", "examplehuman"])
def test_real_fixtures_rows_accounted(tmp_path: Path, shared_data: Path, real: str) -> None:
    if real == "jump":
        src = shared_data / "jump-BR00121431/analysis/2021_04_20_Target2/BR00121431/analysis"
        plate_dir = link_sites(tmp_path, "B", "BR00121431", {p.name: p for p in src.iterdir()})
        result = collate_plate(tmp_path, "B", "BR00121431", backend=("sqlite", "parquet"))
        for name in ("BR00121431-A01-2", "BR00121431-A02-2"):  # Image.csv only: quarantined, never zero cells
            assert _sites(result)[name]["status"] == "quarantined"
    elif real == "data_b":
        src = shared_data / "cytominer-database-fixtures/data_b"
        plate_dir = link_sites(tmp_path, "B", "SQ00015116", {p.name: p for p in src.iterdir() if p.is_dir()})
        result = collate_plate(tmp_path, "B", "SQ00015116", backend=("sqlite", "parquet"))
    else:
        plate_dir = link_sites(tmp_path, "B", "P", {"P-A01-1": shared_data / "examplehuman"})
        result = collate_plate(tmp_path, "B", "P", backend=("sqlite", "parquet"))
        assert _sites(result)["P-A01-1"]["files"]["Experiment.csv"]["not_stored"] == "run metadata"
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize(("files", "given"), [("", "Foo_"), ("Run7_", "Foo_"), ("Run7_", "Run_")])
def test_a_wrong_file_prefix_is_named_as_the_file_missing(tmp_path: Path, files: str, given: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--file-prefix Foo_`` where the files are named otherwise: the message names ``Foo_Image.csv`` and the
    Image file that is there (it said "Image.csv is missing" of a folder holding Image.csv)."""
    from cytoprofile.cli import main

    plate_dir = faults.small_plate(tmp_path, wells=1)
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, lambda n: f"{files}{n}")
    assert main(["collate", str(tmp_path), faults.BATCH, faults.PLATE, "--file-prefix", given, "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{given}Image.csv is missing ({files}Image.csv is there: is --file-prefix '{given}' right?)" in err, err


def test_cli_count_check_and_file_prefix(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    plate_dir = faults.small_plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.rename_files(folder, lambda n: f"Run7_{n}")
        (folder / "README.csv").write_text("a\n1\n")  # hides the prefix from detection
    faults.drop_rows(faults.site(plate_dir), "Run7_Cells", 1)
    ws = str(tmp_path)
    assert main(["collate", ws, faults.BATCH, faults.PLATE, "--count-check", "sometimes", "-q"]) == 1
    assert main(["collate", ws, faults.BATCH, faults.PLATE, "--file-prefix", "Run7_", "--count-check", "warn", "-q"]) == 0
    report = io.read_json(str(tmp_path / "backend" / faults.BATCH / faults.PLATE / f"{faults.PLATE}.report.json"))
    assert report["options"]["count_check"] == "warn" and report["options"]["file_prefix"] == "Run7_"
    sites = {s["site"]: s for s in report["sites"]}
    assert {s["status"] for s in sites.values()} == {"ok"}
    assert sites[faults.site(plate_dir).name]["warnings"]
    assert all(s["files"]["README.csv"]["not_stored"] for s in sites.values())


# --- hostile names and files found by attacking the merged ingest ---


def test_truncated_gzip_quarantines_its_site(tmp_path: Path) -> None:
    import gzip

    plate_dir = faults.small_plate(tmp_path, wells=2)
    folder = faults.site(plate_dir, "A01", 1)
    data = (folder / "Cells.csv").read_bytes()
    (folder / "Cells.csv").unlink()
    (folder / "Cells.csv.gz").write_bytes(gzip.compress(data)[:-30])
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    assert result.status == "done"
    bad = _sites(result)[folder.name]
    assert bad["status"] == "quarantined" and "truncated gzip" in bad["reason"]
    assert sum(s["status"] == "ok" for s in result.report["sites"]) == 3


@pytest.mark.parametrize("name", ["cytoprofile_run", "sqlite_stat1", "single_cells", "SQLITE_x"])
def test_reserved_table_names_are_not_stored_and_named(tmp_path: Path, name: str) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1)
    folder = faults.site(plate_dir, "A01", 1)
    shutil.copy(folder / "Cells.csv", folder / f"{name}.csv")
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    entry = _sites(result)[folder.name]["files"][f"{name}.csv"]
    assert entry["tables"] == [] and "reserves" in entry["not_stored"]


@pytest.mark.parametrize("table", ["Cells", "Image"])
def test_a_column_named_table_number_quarantines(tmp_path: Path, table: str) -> None:
    """The backend adds TableNumber to every table: a column of that name in an object file or in
    Image.csv quarantines the site (in Image.csv it crashed the plate, exit 3)."""
    plate_dir = faults.small_plate(tmp_path, wells=2)
    folder = faults.site(plate_dir, "A01", 1)
    header = faults.read_rows(folder / f"{table}.csv")[0]
    faults.rename_column(folder, table, header[-1], "TableNumber")
    result = _collate(tmp_path, plate_dir)
    assert "reserves for the site key" in _sites(result)[folder.name]["reason"]
    assert {s["status"] for name, s in _sites(result).items() if name != folder.name} == {"ok"}


@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",), ("sqlite", "parquet")])
def test_columns_differing_only_in_case(tmp_path: Path, backend: tuple[str, ...],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1)
    folder = faults.site(plate_dir, "A01", 1)
    header = faults.read_rows(folder / "Cells.csv")[0]
    feature = header[-1]
    faults.rename_column(folder, "Cells", header[-2], feature.lower())
    result = _collate(tmp_path, plate_dir, backend=backend)
    assert "differ only in case" in _sites(result)[folder.name]["reason"]
    # the same column spelled differently in two sites, whatever the backend: the plate is refused, naming the
    # sites of each spelling (two half-empty columns would hide the measurement), once, nothing written
    other = tmp_path / "other"
    plate_dir = faults.small_plate(other, wells=1)
    odd = faults.site(plate_dir, "A01", 1)
    faults.rename_column(odd, "Cells", feature, feature.upper())
    with pytest.raises(InputError, match=rf"spelled '{feature.upper()}' in 1 site \({odd.name}\) and '{feature}' in"):
        collate_plate(other, faults.BATCH, faults.PLATE, backend=backend)
    capsys.readouterr()
    assert main(["collate", str(other), faults.BATCH, faults.PLATE, *[f"--backend={b}" for b in backend], "-q"]) == 1
    err = capsys.readouterr().err
    assert f"first: {faults.PLATE}: {faults.PLATE}:" not in err and "half-empty" in err
    assert not list((other / "backend").rglob(f"{faults.PLATE}.*"))


# --- null tokens, stray files, folder names: the second attack on the ingest -------------------


@pytest.mark.parametrize("token", ["NA", "None", "null", "NULL", "nan", "NaN", "N/A"])
@pytest.mark.parametrize("column", ["Metadata_Gene", "Metadata_Compound", "FileName_OrigDNA", "PathName_OrigDNA",
                                    "URL_OrigDNA", "MD5Digest_OrigDNA"])
def test_text_image_columns_keep_null_like_words(tmp_path: Path, token: str, column: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        if column not in faults.read_rows(folder / "Image.csv")[0]:
            faults.add_image_column(folder, column, "x")
    target = faults.site(plate_dir, "A02", 1)
    faults.set_image_value(target, column, token)
    faults.set_image_value(faults.site(plate_dir, "A01", 2), column, "")  # empty text is NULL
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    stored = _query(result.outputs["sqlite"], f'SELECT Metadata_Well, Metadata_Site, "{column}" FROM Image')
    by_site = {(w, str(s)): v for w, s, v in stored}
    assert by_site[("A02", "1")] == token
    assert by_site[("A01", "2")] is None
    parquet = pq.read_table(result.outputs["parquet"], columns=["Metadata_Well", "Metadata_Site", column]).to_pylist()
    by_site = {(r["Metadata_Well"], str(r["Metadata_Site"])): r[column] for r in parquet}
    assert by_site[("A02", "1")] == token and by_site[("A01", "2")] is None
    assert sum(v is None for v in by_site.values()) == 1


_NUMERIC_PLACES = [("Image", "Count_Cells", False), ("Image", "Granularity_1_DNA", True), ("Cells", "AreaShape_Area", False),
                   ("Nuclei", "Location_Center_X", True), ("Cytoplasm", "AreaShape_Area", False),
                   ("Cells", "Parent_Nuclei", True), ("Cytoplasm", "Parent_Cells", False)]


def _set(folder: Path, table: str, column: str, value: str, row: int = 1) -> None:
    if table == "Image":
        faults.set_image_value(folder, column, value)
    else:
        faults.set_object_value(folder, table, column, value, row=row)


@pytest.mark.parametrize("token", ["NA", "None", "null", "NULL", "n/a", "missing"])
@pytest.mark.parametrize(("table", "column", "gz"), _NUMERIC_PLACES)
def test_words_in_numeric_columns_are_non_numbers_never_null(tmp_path: Path, token: str, table: str, column: str, gz: bool) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 1)
    row = 1 if table == "Image" else 2
    _set(target, table, column, token, row=row)
    if gz:
        faults.compress(target)
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined", f"{token!r} in {table}.{column} was accepted"
    name = f"{table}.csv" + (".gz" if gz else "")
    reason = entry["reason"]
    assert reason.startswith(f"{name} line {row + 1}") and column in reason and repr(token) in reason, reason
    assert entry["file"].endswith(name)


@pytest.mark.parametrize(("token", "table", "column", "gz"), [
    (token, *place) for token in ("", "nan", "NaN", "inf", "-inf") for place in _NUMERIC_PLACES
    if "Parent" not in place[1] and not (token.endswith("inf") and place[1].startswith("Count_"))])
def test_cellprofiler_missing_numbers_are_null_and_inf_kept(tmp_path: Path, token: str, table: str, column: str, gz: bool) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1)
    target = faults.site(plate_dir)
    _set(target, table, column, token)
    if gz:
        faults.compress(target)
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    assert _sites(result)[target.name]["status"] == "ok"
    stored = column if table == "Image" else f"{table}_{column}"
    where = "" if table == "Image" else " WHERE ObjectNumber = 1"
    value = _query(result.outputs["sqlite"], f'SELECT "{stored}" FROM "{table}"{where}')[0][0]
    parquet = pq.read_table(Path(result.outputs["parquet"]).parent / f"P1_{table}.parquet").to_pylist()
    pvalue = parquet[0][stored] if table == "Image" else next(r[stored] for r in parquet if r["ObjectNumber"] == 1)
    if token.endswith("inf"):
        assert value == pvalue == float(token)
    else:
        assert value is None and pvalue is None


@pytest.mark.parametrize("value", ["abc", "1.2.3", "NA"])
@pytest.mark.parametrize(("table", "column", "row"), [("Cells", "AreaShape_Area", 1), ("Cells", "AreaShape_Area", "last"),
                                                      ("Nuclei", "Location_Center_Y", 3), ("Image", "Granularity_2_DNA", 1),
                                                      ("object", "AreaShape_Extent", 4)])
@pytest.mark.parametrize("blank_before", [False, True])
def test_non_number_reason_names_file_line_and_column(tmp_path: Path, value: str, table: str, column: str, row: object,
                                                      blank_before: bool) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=2, cells=6)
    target = faults.site(plate_dir)
    name = f"{table}.csv"
    header_lines = 1
    if table == "object":
        for folder in sorted(plate_dir.iterdir()):
            faults.to_object_csv(folder)
        header_lines = 2
    rows = faults.read_rows(target / name)
    at = len(rows) - header_lines if row == "last" else int(row)  # type: ignore[call-overload]
    labels = rows[0] if table == "object" else None
    where = [i for i, c in enumerate(rows[header_lines - 1]) if c == column and (labels is None or labels[i] == "Cells")][0]
    rows[header_lines - 1 + at][where] = value
    faults.write_rows(target / name, rows)
    line = header_lines + at
    if blank_before:  # line numbers are the file's: blank lines count
        faults.insert_line(target, name, b"", at=header_lines + 1)
        line += 1
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"] == f"{name} line {line}, column {column}: {value!r} is not a number"


def _stray(folder: Path, name: str) -> None:
    """A file that is not CellProfiler output, as found in real site folders."""
    if name == "notes.csv":
        (folder / name).write_text("note,by\nre-run after focus fix,JD\n")
    elif name == "Image - Copy.csv":
        shutil.copy(folder / "Image.csv", folder / name)
    elif name == "Cells_noKeys.csv":  # an object-like table whose keys were dropped by a spreadsheet
        rows = faults.read_rows(folder / "Cells.csv")
        faults.write_rows(folder / name, [r[2:] for r in rows])
    elif name == "summary.csv.gz":
        (folder / name).write_bytes(gzip.compress(b"Plate,Cells\nP1,12\nP1,13\n"))
    elif name == "MyExpt_Experiment.csv":
        (folder / name).write_text("Key,Value\nCellProfiler_Version,4.2.6\nRun_Timestamp,2024-01-01\n")
    elif name == "._Cells.csv":
        (folder / name).write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\x09" + bytes(range(40)))
    elif name == ".DS_Store":
        (folder / name).write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    else:
        (folder / name).write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64))


_STRAYS = [("notes.csv", "not_stored", "not a CellProfiler object table (no ImageNumber or ObjectNumber column)"),
           ("Image - Copy.csv", "not_stored", "not a CellProfiler object table (no ObjectNumber column)"),
           ("Cells_noKeys.csv", "not_stored", "not a CellProfiler object table (no ImageNumber or ObjectNumber column)"),
           ("summary.csv.gz", "not_stored", "not a CellProfiler object table"),
           ("MyExpt_Experiment.csv", "not_stored", "run metadata"),
           ("._Cells.csv", "not_read", "AppleDouble"),
           (".DS_Store", "not_read", "not a CSV file"),
           ("Thumbs.db", "not_read", "not a CSV file")]


@pytest.mark.parametrize(("name", "kind", "reason"), _STRAYS)
@pytest.mark.parametrize("everywhere", [False, True])
def test_stray_files_are_named_and_the_site_kept(tmp_path: Path, name: str, kind: str, reason: str, everywhere: bool) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    folders = sorted(plate_dir.iterdir()) if everywhere else [faults.site(plate_dir, "A02", 1)]
    for folder in folders:
        _stray(folder, name)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir, backend=("sqlite", "parquet"))
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    for folder in folders:
        entry = _sites(result)[folder.name]["files"][name]
        assert reason in entry[kind] and entry["tables"] == []
        assert (entry["rows"] is None) is (kind == "not_read")
    for table in ("Image", "Cells", "Cytoplasm", "Nuclei"):
        assert _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3") == \
            _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")
    tables = {r[0] for r in _query(result.outputs["sqlite"], "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"Image", "Cells", "Cytoplasm", "Nuclei", "cytoprofile_run"}
    assert Path(result.outputs["profiles"]).read_bytes() == Path(clean.outputs["profiles"]).read_bytes()


def test_stray_files_exit_0_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cytoprofile.cli import app

    plate_dir = faults.small_plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        for name, _, _ in _STRAYS:
            _stray(folder, name)
    run = CliRunner().invoke(app, ["collate", str(tmp_path), faults.BATCH, faults.PLATE, "-q"])
    assert run.exit_code == 0, run.output
    report = io.read_json(str(tmp_path / "backend" / faults.BATCH / faults.PLATE / f"{faults.PLATE}.report.json"))
    assert {s["status"] for s in report["sites"]} == {"ok"}


@pytest.mark.parametrize("compartment", ["Cells", "Nuclei"])
def test_compartment_file_that_is_not_a_table_quarantines_naming_it(tmp_path: Path, compartment: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 2)
    rows = faults.read_rows(target / f"{compartment}.csv")
    faults.write_rows(target / f"{compartment}.csv", [r[:1] + r[2:] for r in rows])  # ObjectNumber lost
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"].startswith(f"{compartment}.csv: not a CellProfiler object table (no ObjectNumber column)")
    assert "compartments" in entry["reason"] and entry["file"].endswith(f"{compartment}.csv")


@pytest.mark.parametrize(("column", "value", "shown"), [
    ("Metadata_Well", "B02", "B02"), ("Metadata_Well", "r02c03", "r02c03"), ("Metadata_Well", "C3", "C3"),
    ("Metadata_Site", "3", "3"), ("Metadata_Site", "11", "11")])
def test_folder_name_disagreeing_with_image_csv_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture, column: str,
                                                            value: str, shown: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 1)
    faults.set_image_value(target, column, value)
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "ok"
    folder_value = {"Metadata_Well": "A01", "Metadata_Site": "1"}[column]
    expected = f"folder {target.name} says {column} {folder_value!r}, Image.csv says {shown!r} (Image.csv's value is used)"
    assert entry["warnings"] == [expected]
    assert expected in caplog.text
    others = [s for s in result.report["sites"] if s["site"] != target.name]
    assert not any(s.get("warnings") for s in others)
    stored = _query(result.outputs["sqlite"], f"SELECT {column} FROM Image WHERE TableNumber = "
                    f"{zlib.crc32((target / 'Image.csv').read_bytes()) & 0xFFFFFFFF}")
    assert stored == [(normalise_well(value) if column == "Metadata_Well" else value,)]  # Image.csv wins
    profiles = io.read_table(result.outputs["profiles"])
    if column == "Metadata_Well":  # the site's cells are aggregated under Image.csv's well
        assert normalise_well(value) in profiles["Metadata_Well"].tolist()


@pytest.mark.parametrize(("column", "value"), [("Metadata_Well", "a01"), ("Metadata_Well", "r01c01"), ("Metadata_Site", "01")])
def test_folder_name_agreeing_after_normalising_is_quiet(tmp_path: Path, column: str, value: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    faults.set_image_value(faults.site(plate_dir, "A01", 1), column, value)
    result = _collate(tmp_path, plate_dir)
    assert not any(s.get("warnings") for s in result.report["sites"])


@pytest.mark.parametrize("image_has_plate", [True, False])
def test_site_folder_naming_another_plate_is_reported(tmp_path: Path, image_has_plate: bool) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 1)
    if not image_has_plate:
        pd.read_csv(target / "Image.csv").drop(columns=["Metadata_Plate"]).to_csv(target / "Image.csv", index=False)
    moved = target.rename(plate_dir / "P9-A01-1")
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[moved.name]
    assert entry["status"] == "ok"
    assert len(entry["warnings"]) == 1 and "P9-A01-1 says Metadata_Plate 'P9'" in entry["warnings"][0]
    assert {r[0] for r in _query(result.outputs["sqlite"], "SELECT Metadata_Plate FROM Image")} == {"P1"}
    assert io.read_table(result.outputs["profiles"])["Metadata_Plate"].unique().tolist() == ["P1"]


@pytest.mark.parametrize("layout", [("extra/Cells.csv",), ("old/run1/Image.csv", "old/run1/Nuclei.csv.gz"),
                                    ("outlines/A01_1_cells.png",), ("extra/Cells.csv", "extra/notes.txt")])
def test_files_in_site_subfolders_are_named_not_read(tmp_path: Path, layout: tuple[str, ...]) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    target = faults.site(plate_dir, "A02", 1)
    for rel in layout:
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        source = target / Path(rel).name.replace(".gz", "")
        data = source.read_bytes() if source.exists() else b"\x89PNG\r\n"
        path.write_bytes(gzip.compress(data) if rel.endswith(".gz") else data)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "ok"
    for rel in layout:
        assert entry["files"][rel] == {"rows": None, "tables": [], "not_read": "in a subfolder"}
    for table in ("Image", "Cells", "Cytoplasm", "Nuclei"):
        assert _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3") == \
            _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")


@pytest.mark.parametrize(("first", "second"), [("Cells.csv", "CELLS.CSV"), ("Nuclei.csv", "nuclei.csv.gz"),
                                               ("Cells.csv", "Cells.csv.gz"), ("Image.csv", "Image.csv.gz"),
                                               ("object.csv", "Cells.csv"), ("object.csv", "NUCLEI.CSV")])
def test_two_files_of_one_table_quarantine_naming_both(tmp_path: Path, first: str, second: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 1)
    if first == "object.csv":
        keep = (target / {"Cells.csv": "Cells.csv", "NUCLEI.CSV": "Nuclei.csv"}[second]).read_bytes()
        faults.to_object_csv(target)
        (target / second).write_bytes(keep)
    else:
        data = (target / first).read_bytes()
        (target / second).write_bytes(gzip.compress(data) if second.endswith(".gz") else data)
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "quarantined"
    match = re.fullmatch(r"(\S+) and (\S+) hold the same table (\w+)", entry["reason"])
    assert match and sorted(match.group(1, 2)) == sorted([first, second]), entry["reason"]


@pytest.mark.parametrize("line", [b"   ", b"\t", b" \t \r", b"\r", b"  \r"])
@pytest.mark.parametrize(("name", "at"), [("Cells.csv", 3), ("Nuclei.csv", 2), ("Cytoplasm.csv", -1), ("Image.csv", 2),
                                          ("Image.csv", -1), ("Cells.csv.gz", 4), ("Image.csv.gz", 3)])
def test_whitespace_only_lines_are_skipped_like_blank_lines(tmp_path: Path, line: bytes, name: str, at: int) -> None:
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    target = faults.site(plate_dir, "A01", 2)
    if name.endswith(".gz"):
        faults.compress(target, (name[:-3],))
    n_lines = len(faults.read_rows(target / name))
    faults.insert_line(target, name, line, at=n_lines + 1 if at == -1 else at)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir)
    entry = _sites(result)[target.name]
    assert entry["status"] == "ok", entry["reason"]
    assert entry["files"][name]["rows"] == n_lines - 1
    for table in ("Image", "Cells", "Cytoplasm", "Nuclei"):  # TableNumber is Image.csv's CRC32: the bytes differ
        order = "Metadata_Well, Metadata_Site" if table == "Image" else "2, 3, 4"
        ours = [r[1:] for r in _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY {order}")]
        assert ours == [r[1:] for r in _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY {order}")]


def test_whitespace_line_with_a_real_fault_still_names_the_fault(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 2)
    faults.set_object_value(target, "Cells", "AreaShape_Area", "abc", row=2)
    faults.insert_line(target, "Cells.csv", b"  \t", at=2)
    result = _collate(tmp_path, plate_dir)
    assert _sites(result)[target.name]["reason"] == "Cells.csv line 4, column AreaShape_Area: 'abc' is not a number"


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("AreaShape_Area", "abc", "Cells.csv line 7, column AreaShape_Area: 'abc' is not a number"),
    ("ObjectNumber", "1.5", "Cells.csv line 7: ObjectNumber '1.5' is not an integer key (0 to 2^53)"),
])
def test_the_line_named_counts_quoted_values_across_lines(tmp_path: Path, column: str, value: str, reason: str) -> None:
    """A quoted value spanning lines once shifted the line a reason names (it counted physical lines as rows)."""
    plate_dir = faults.small_plate(tmp_path, cells=20)
    target = faults.site(plate_dir, "A01", 2)
    rows = faults.read_rows(target / "Cells.csv")
    rows = [[*r, note] for r, note in zip(rows, ["Metadata_Note", "two\nlines", "three\nmore\nlines", *[""] * len(rows)])]
    rows[3][rows[0].index(column)] = value  # the third data row: after the header (1 line) and two rows of 2 and 3 lines
    faults.write_rows(target / "Cells.csv", rows, raw=False)
    result = _collate(tmp_path, plate_dir)
    assert _sites(result)[target.name]["reason"] == reason


def test_gzip_object_csvs_are_decompressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cytoprofile.ingest import text

    plate_dir = faults.small_plate(tmp_path, wells=1, sites=2, cells=3000, features=40)
    for folder in sorted(plate_dir.iterdir()):
        faults.compress(folder)
    by_bytes = {p.read_bytes(): p for p in plate_dir.rglob("*.gz")}
    consumed: dict[Path, int] = {p: 0 for p in by_bytes.values()}
    real_open, real_decompress = gzip.open, gzip.decompress

    class _Counted(io_module.RawIOBase):
        def __init__(self, path: Path) -> None:
            self.fh, self.path = open(path, "rb"), path  # noqa: SIM115 - closed with the gzip stream

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            n = self.fh.readinto(buffer)
            consumed[self.path] += n or 0
            return n  # type: ignore[no-any-return]

        def close(self) -> None:
            self.fh.close()
            super().close()

    def counted_open(path: Any, mode: str = "rb", **kwargs: Any) -> Any:
        return real_open(_Counted(Path(path)), mode, **kwargs)

    def counted_decompress(data: bytes) -> bytes:
        consumed[by_bytes[data]] += len(data)
        return real_decompress(data)

    monkeypatch.setattr(text, "gzip", type("gzip", (), {"open": staticmethod(counted_open),
                                                          "decompress": staticmethod(counted_decompress)}))
    result = _collate(tmp_path, plate_dir)
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    for path, n in consumed.items():
        size = path.stat().st_size
        if path.name.startswith("Image"):  # one row a site: read in the scan and again with the site
            assert n <= 3 * size + (1 << 17)
        else:  # the header's first block, then the whole file once
            assert size > 1 << 19 and n <= size + (1 << 17), f"{path.name}: {n} bytes decompressed from a {size}-byte file"


@pytest.mark.parametrize("where", ["sqlite", "parquet", "aggregate"])
@pytest.mark.parametrize("table", ["Cells", "Nuclei"])
def test_lost_rows_fail_the_plate_with_exit_1_and_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                                             table: str) -> None:
    import dataclasses

    from typer.testing import CliRunner

    from cytoprofile import backend, collate
    from cytoprofile.cli import app

    faults.small_plate(tmp_path)
    lost: list[str] = []

    def losing(site: Any) -> Any:
        """The site with its first row of ``table`` gone, once a plate."""
        if lost or not len(site.objects[table]):
            return site
        lost.append(site.name)
        return dataclasses.replace(site, objects={**site.objects, table: site.objects[table][1:]},
                                   row_keys={**site.row_keys, table: site.row_keys[table][1:]})

    holder, name = {"sqlite": (backend.SQLiteBackendWriter, "add"), "parquet": (backend.ParquetBackendWriter, "add"),
                    "aggregate": (collate.wells.WellBuffer, "add")}[where]
    original = getattr(holder, name)
    monkeypatch.setattr(holder, name, lambda self, site, *a: original(self, losing(site), *a))
    compartments = "Cells,Cytoplasm,Nuclei" if table == "Cells" or where != "aggregate" else "Nuclei,Cells,Cytoplasm"
    run = CliRunner().invoke(app, ["collate", str(tmp_path), faults.BATCH, faults.PLATE, "--backend", "sqlite",
                                   "--backend", "parquet", "--compartments", compartments])
    assert lost and run.exit_code == 1, run.output
    assert f"table {table}:" in run.output and "rows in" in run.output and faults.PLATE in run.output
    out = tmp_path / "backend" / faults.BATCH / faults.PLATE
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert [n for n in left if not n.startswith(".")] == [] and not [n for n in left if n.endswith(".tmp")], left


@pytest.mark.parametrize("name", ["Cells.csv", "Nuclei.csv", "Image.csv"])
@pytest.mark.parametrize("prefix", ["", "MyExpt_"])
def test_gzip_data_under_a_plain_csv_name_names_the_fix(tmp_path: Path, name: str, prefix: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    if prefix:
        faults.rename_files(folder, lambda n: prefix + n)
    path = folder / (prefix + name)
    path.write_bytes(gzip.compress(path.read_bytes()))
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    entry = _sites(result)[folder.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"] == f"{prefix}{name} is gzip-compressed but not named .gz; rename it to {prefix}{name}.gz"
    assert {s["status"] for n, s in _sites(result).items() if n != folder.name} == {"ok"}


def test_each_file_is_parsed_once_per_collate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed guard (the backend must stay within 10% of the reference commit): the scan's parse of
    Image.csv is the one the read pass uses, and each object CSV is parsed once."""
    from cytoprofile.ingest import image, objects

    calls: dict[str, int] = {"image": 0, "objects": 0}
    read_image, read_objects = image._read_image_csv, objects._object_values

    def count_image(*args: Any, **kwargs: Any) -> Any:
        calls["image"] += 1
        return read_image(*args, **kwargs)

    def count_objects(*args: Any, **kwargs: Any) -> Any:
        calls["objects"] += 1
        return read_objects(*args, **kwargs)

    monkeypatch.setattr(image, "_read_image_csv", count_image)
    monkeypatch.setattr(objects, "_object_values", count_objects)
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=3, cells=4, features=4, seed=5)
    result = collate_plate(tmp_path, "BATCH1", "P1")
    assert result.report["totals"]["sites_ok"] == 6
    assert calls == {"image": 6, "objects": 6 * len(COMPARTMENTS)}


# --- line endings: CR alone (classic Mac, some spreadsheet saves) ----------------------------------


def _rows_without_table_number(sqlite: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of a table but its TableNumber (a CRC32 of Image.csv's bytes), as a sorted multiset."""
    columns = [c for c in _columns(sqlite, table) if c != "TableNumber"]
    rows = _query(sqlite, f'SELECT {", ".join(chr(34) + c + chr(34) for c in columns)} FROM "{table}"')
    return sorted(rows, key=repr)


def _as_found(ws: Path, *, gz: bool, layout: str) -> Path:
    """A plate whose first site is shaped as the test asks (before any line ending changes)."""
    plate_dir = faults.small_plate(ws)
    folder = faults.site(plate_dir)
    if layout == "object.csv":
        faults.to_object_csv(folder)
    if layout == "header-only":
        faults.add_object_table(folder, "Extra", rows=0)
    if gz:
        faults.compress(folder)
    return plate_dir


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("layout", "files"), [
    ("plain", ("Image.csv",)), ("plain", ("Cells.csv",)), ("plain", ("Nuclei.csv", "Cytoplasm.csv")),
    ("plain", ("Image.csv", "Cells.csv", "Cytoplasm.csv", "Nuclei.csv")), ("object.csv", ("Image.csv", "object.csv")),
    ("header-only", ("Extra.csv",)),
])
def test_cr_line_endings_are_read_as_line_endings(tmp_path: Path, layout: str, files: tuple[str, ...], gz: bool) -> None:
    """A CSV with no LF at all ends its lines with CR: read as such, noted, every row kept."""
    clean_dir = _as_found(tmp_path / "clean", gz=gz, layout=layout)
    plate_dir = _as_found(tmp_path / "ws", gz=gz, layout=layout)
    names = [f"{f}.gz" if gz else f for f in files]
    for name in names:
        faults.cr_line_endings(faults.site(plate_dir), name)
    clean = _collate(tmp_path / "clean", clean_dir)
    result = _collate(tmp_path / "ws", plate_dir, backend=("sqlite", "parquet"))
    entry = _sites(result)[faults.site(plate_dir).name]
    assert entry["status"] == "ok", entry["reason"]
    assert sorted(n for n in entry.get("notes", []) if "CR line endings" in n) == \
        sorted(f"{n} read with CR line endings" for n in names)
    tables = [r[0] for r in _query(clean.outputs["sqlite"], "SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        if table != "cytoprofile_run":
            assert _rows_without_table_number(result.outputs["sqlite"], table) == \
                _rows_without_table_number(clean.outputs["sqlite"], table), table
    assert Path(result.outputs["profiles"]).read_bytes() == Path(clean.outputs["profiles"]).read_bytes()


@pytest.mark.parametrize(("name", "line"), [("Image.csv", 1), ("Image.csv", 2), ("Cells.csv", 1), ("Cells.csv", 3),
                                            ("Nuclei.csv.gz", 2), ("Cytoplasm.csv", -2)])
def test_cr_line_endings_mixed_with_lf_name_the_fix(tmp_path: Path, name: str, line: int) -> None:
    """A CR alone among LF line endings is ambiguous (a row's end, or a byte of a value): the site is
    quarantined, the reason naming the line and the fix, and every row is counted."""
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir)
    if name.endswith(".gz"):
        faults.compress(folder, (name[: -len(".gz")],))
    if line < 0:
        line += len(faults.read_rows(folder / name))
    faults.cr_line_endings(folder, name, only_line=line)
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[folder.name]
    assert entry["status"] == "quarantined"
    assert entry["reason"] == (f"{name} mixes CR line endings with LF ones (a CR alone ends line {line}); convert the CRs "
                               "to LF (e.g. with mac2unix) or save the file again with one kind of line ending")
    assert {s["status"] for n, s in _sites(result).items() if n != folder.name} == {"ok"}


# --- empty files: a stray one is set aside, a needed one quarantines its site ----------------------------

_EMPTY = {"0 bytes": (b"", "empty file (0 bytes)"),
          "blank lines": (b"\n  \n\t\n", "no header row (blank lines only)"),
          "header only": (b"Plate,Note\n", "not a CellProfiler object table (no ImageNumber or ObjectNumber column)")}


@pytest.mark.parametrize("content", sorted(_EMPTY))
@pytest.mark.parametrize("name", ["Cells - Copy.csv", "Foo.csv", "NOTES.CSV", "Extra.csv.gz"])
@pytest.mark.parametrize("everywhere", [False, True])
def test_empty_stray_files_are_not_stored_and_the_site_kept(tmp_path: Path, content: str, name: str, everywhere: bool) -> None:
    data, reason = _EMPTY[content]
    faults.small_plate(tmp_path / "clean")
    plate_dir = faults.small_plate(tmp_path / "ws")
    folders = sorted(plate_dir.iterdir()) if everywhere else [faults.site(plate_dir, "A02", 1)]
    for folder in folders:
        (folder / name).write_bytes(gzip.compress(data) if name.endswith(".gz") and data else data)
    clean = collate_plate(tmp_path / "clean", faults.BATCH, faults.PLATE)
    result = _collate(tmp_path / "ws", plate_dir)
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    for folder in folders:
        assert _sites(result)[folder.name]["files"][name] == {"rows": 0, "tables": [], "not_stored": reason}
    for table in ("Image", "Cells", "Cytoplasm", "Nuclei"):
        assert _query(result.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3") == \
            _query(clean.outputs["sqlite"], f"SELECT * FROM {table} ORDER BY 1, 2, 3")
    assert Path(result.outputs["profiles"]).read_bytes() == Path(clean.outputs["profiles"]).read_bytes()


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("Image.csv", "0 bytes", "Image.csv is empty (0 bytes)"),
    ("Image.csv", "blank lines", "Image.csv has no header row"),
    ("Nuclei.csv", "0 bytes", "Nuclei.csv is empty (0 bytes); Nuclei is one of the compartments"),
    ("Cells.csv.gz", "0 bytes", "Cells.csv.gz is empty (0 bytes); Cells is one of the compartments"),
    ("Cytoplasm.csv", "blank lines", "Cytoplasm.csv: no header row (blank lines only); Cytoplasm is one of the compartments"),
    ("Cells.csv", "header only", "Cells.csv: not a CellProfiler object table (no ImageNumber or ObjectNumber column); "
                                 "Cells is one of the compartments"),
    ("object.csv", "0 bytes", "Cells.csv is missing (other sites have it); object.csv is empty (0 bytes)"),
])
def test_empty_needed_file_quarantines_its_site_naming_it(tmp_path: Path, name: str, content: str, reason: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 2)
    if name == "object.csv":
        faults.to_object_csv(target)
    for existing in [p for p in target.iterdir() if p.name.split(".")[0] == name.split(".")[0]]:
        existing.unlink()
    (target / name).write_bytes(_EMPTY[content][0])
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert (entry["status"], entry["reason"]) == ("quarantined", reason)
    assert entry["file"].endswith(name) and entry["files"][name]["rows"] == 0
    assert {s["status"] for n, s in _sites(result).items() if n != target.name} == {"ok"}


@pytest.mark.parametrize("count_check", ["warn", "error"])
def test_empty_file_outside_the_compartments_is_set_aside(tmp_path: Path, count_check: str) -> None:
    """With ``--compartments Cells,Nuclei``, an empty Cytoplasm.csv is a stray file, not stored; as Image.csv
    counts Cytoplasm objects in that image, the site is kept with a warning under ``warn`` and quarantined
    under ``error`` (the objects counted are in no table)."""
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A01", 2)
    (target / "Cytoplasm.csv").write_bytes(b"")
    result = _collate(tmp_path, plate_dir, compartments=("Cells", "Nuclei"), count_check=count_check)
    entry = _sites(result)[target.name]
    if count_check == "error":
        assert entry["status"] == "quarantined"
        assert entry["reason"].startswith("Cytoplasm.csv is empty (0 bytes), but Image.csv's Count_Cytoplasm says")
        return
    assert entry["status"] == "ok"
    assert entry["files"]["Cytoplasm.csv"] == {"rows": 0, "tables": [], "not_stored": "empty file (0 bytes)"}
    assert result.report["partial_tables"]["Cytoplasm"]["sites_without"] == [target.name]


# --- binary files under a table's name -------------------------------------------------------------------

_BINARY = {"ole": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64),
           "random": np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
           "latin-1": "ImageNumber,ObjectNumber,Location_Center_X\n1,1,caf\xe9\n1,2,\xe9t\xe9\n".encode("latin-1")}


@pytest.mark.parametrize("kind", sorted(_BINARY))
@pytest.mark.parametrize("name", ["Cells.csv", "Nuclei.csv.gz"])
def test_binary_table_file_quarantines_as_not_utf8(tmp_path: Path, kind: str, name: str) -> None:
    """A file that is not UTF-8 text under a compartment's name: quarantined with that reason; it has
    no rows to count, and the report says so (the accounting helper agrees)."""
    plate_dir = faults.small_plate(tmp_path)
    target = faults.site(plate_dir, "A02", 1)
    (target / name.removesuffix(".gz")).unlink()
    data = _BINARY[kind]
    (target / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert faults.count_data_rows(target / name) is None
    result = _collate(tmp_path, plate_dir)
    entry = _sites(result)[target.name]
    assert (entry["status"], entry["reason"]) == ("quarantined", f"{name} is not UTF-8 text")
    assert entry["files"][name]["rows"] is None and entry["files"][name]["unreadable"].startswith("not UTF-8 text (byte 0x")


@pytest.mark.parametrize(("data", "rows"), [
    (b"ImageNumber,ObjectNumber,x\n1,1,2\n1,2,3\n", 2), (b"ImageNumber,ObjectNumber,x\r1,1,2\r1,2,3\r", 2),
    (b"ImageNumber,ObjectNumber,x\r\n1,1,2\r\n\r\n1,2,3", 2), (b"Metadata_Note,x\nform\x0cfeed,1\nline\x1csep,2\n", 2),
    (b"\xff\xfeI\x00m\x00", None), (b"", 0), (b"a,b\n", 0)])
def test_count_data_rows_counts_lines_as_csv_parsers_do(tmp_path: Path, data: bytes, rows: int | None) -> None:
    """The test's own row count: rows end at LF, CRLF or CR only (never at a form feed); text that is not
    UTF-8 has no rows (None)."""
    path = tmp_path / "Some.csv"
    path.write_bytes(data)
    assert faults.count_data_rows(path) == rows


@pytest.mark.parametrize("table", ["Cells.csv", "Image.csv"])
@pytest.mark.parametrize("cut", [1, 2])
def test_a_last_row_without_a_line_ending_is_a_warning_naming_the_file(tmp_path: Path, table: str, cut: int,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A copy cut inside its last value parses (fields and rows agree) with that value short: the site is kept
    (hand-trimmed files lack the final newline too) and the file is named, in the report and on the terminal; a cut
    that changes a parent link is caught by the parent's Children_ count."""
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4, seed=2)
    site = tmp_path / "analysis/BATCH1/P1/analysis/P1-A01-1"
    path = site / table
    path.write_bytes(path.read_bytes()[:-cut])
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, "BATCH1", "P1")
    report = {s["site"]: s for s in result.report["sites"]}
    if (table, cut) == ("Cells.csv", 2):  # the last value, Parent_Nuclei 10, is cut to 1: a link the counts refute
        assert report["P1-A01-1"]["status"] == "quarantined", report["P1-A01-1"]
        assert "Children_Cells_Count 1 but 2 Cells row(s) name it in Parent_Nuclei" in report["P1-A01-1"]["reason"]
        return
    said = [w for w in report["P1-A01-1"].get("warnings", []) if "ends without a line ending" in w]
    assert len(said) == 1 and said[0].startswith(table)
    assert not any("ends without" in w for s, r in report.items() if s != "P1-A01-1" for w in r.get("warnings", []))
    assert f"site P1-A01-1: {table} ends without a line ending" in caplog.text
    assert result.report["totals"]["sites_ok"] == 4


@pytest.mark.parametrize("sites", [3, 16])
def test_site_warnings_are_said_once_and_a_few_per_plate(tmp_path: Path, sites: int,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Every site warning is in the report; the terminal says the first ten, then how many more, and a folder
    name disagreeing with Image.csv once for the plate (not again per site)."""
    from cytoprofile.collate.read import _SITE_WARNINGS_SAID

    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=8, cells=3, features=3, seed=2)
    analysis = tmp_path / "analysis/BATCH1/P1/analysis"
    folders = sorted(analysis.iterdir())[:sites]
    for folder in folders:
        path = folder / "Cells.csv"
        path.write_bytes(path.read_bytes()[:-1])
    faults.set_image_value(folders[0], "Metadata_Site", "9")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, "BATCH1", "P1")
    n = len([w for s in result.report["sites"] for w in s.get("warnings", []) if "ends without a line ending" in w])
    assert n >= min(sites, _SITE_WARNINGS_SAID + 1)  # a site without cells has no last row to cut
    lines = [r.getMessage() for r in caplog.records]
    said = [m for m in lines if "ends without a line ending" in m]
    assert len(said) == min(n, _SITE_WARNINGS_SAID)
    more = [m for m in lines if "more site warning(s)" in m]
    assert more == ([f"P1: {n - _SITE_WARNINGS_SAID} more site warning(s), listed with their sites in the report"]
                    if n > _SITE_WARNINGS_SAID else [])
    assert len([m for m in lines if "says Metadata_Site" in m]) == 1


@pytest.mark.parametrize("name", ["Cells.csv", "P1-A03-1.csv", "P1-A03-1", ".DS_Store"])
def test_files_beside_the_site_folders_are_named(tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A file directly in the plate's analysis folder is in no site: named in the report as not read."""
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4, seed=2)
    stray = tmp_path / "analysis/BATCH1/P1/analysis" / name
    stray.write_text("ImageNumber,ObjectNumber\n1,1\n")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        result = collate_plate(tmp_path, "BATCH1", "P1")
    assert "not read" in result.report["files_not_read"][name]
    assert result.report["totals"]["sites"] == 2
    assert ("beside the site folders are not read" in caplog.text) == (not name.startswith("."))


def test_two_header_only_image_files_keep_their_own_reason(tmp_path: Path) -> None:
    """Two sites whose Image.csv hold a header and no row have identical Image.csv, yet neither is a copy of the
    other: each is quarantined for its empty Image.csv (one was said to be "a copy of site ...")."""
    plate_dir = faults.small_plate(tmp_path)
    empty = [faults.site(plate_dir, "A01", 2), faults.site(plate_dir, "A02", 1)]
    for folder in empty:
        header = faults.read_rows(folder / "Image.csv")[0]
        faults.write_rows(folder / "Image.csv", [header])
    assert (empty[0] / "Image.csv").read_bytes() == (empty[1] / "Image.csv").read_bytes()
    result = _collate(tmp_path, plate_dir)
    sites = _sites(result)
    reasons = [sites[f.name]["reason"] for f in empty]
    assert all(sites[f.name]["status"] == "quarantined" for f in empty)
    assert not any("copy" in r or "identical" in r for r in reasons), reasons
    assert reasons[0].replace(empty[0].name, "") == reasons[1].replace(empty[1].name, "")


@pytest.mark.parametrize("table", ["Image", "Cells"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-16-le no BOM", "utf-16-be no BOM"])
def test_a_utf16_file_is_named_as_such(tmp_path: Path, table: str, encoding: str) -> None:
    """A spreadsheet's "Unicode text" save is UTF-16: the reason says so and how to convert it (it was named a
    column name that is not UTF-8, to be renamed). Without a byte-order mark, ASCII as UTF-16 is valid UTF-8
    with a NUL after every letter: it was read as a header of odd names."""
    plate_dir = faults.small_plate(tmp_path)
    folder = faults.site(plate_dir, "A01", 1)
    text = (folder / f"{table}.csv").read_text()
    data = text.encode(encoding.removesuffix(" no BOM"))
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    (folder / f"{table}.csv").write_bytes(data)
    result = _collate(tmp_path, plate_dir)
    reason = _sites(result)[folder.name]["reason"]
    iconv = {"utf-16-le no BOM": "UTF-16LE", "utf-16-be no BOM": "UTF-16BE"}.get(encoding, "UTF-16")
    assert "is UTF-16 text" in reason and f"iconv -f {iconv} -t UTF-8" in reason and "rename that column" not in reason


@pytest.mark.parametrize("link", ["symbolic", "hard"])
@pytest.mark.parametrize("linked", [["Cells.csv"], ["Cells.csv", "Cytoplasm.csv", "Nuclei.csv"]])
def test_a_site_whose_table_file_links_to_another_site_s_is_refused(tmp_path: Path, linked: list[str],
                                                                     link: str) -> None:
    """A site's object CSVs linked (symbolically or hard) to another site's files, its Image.csv counts matching:
    the same rows would be stored under two sites (exit 0). The later site is quarantined, naming the file and the
    site holding it."""
    plate_dir = faults.small_plate(tmp_path)
    source, other = faults.site(plate_dir, "A01", 1), faults.site(plate_dir, "A01", 2)
    for name in linked:
        (other / name).unlink()
        if link == "hard":
            (other / name).hardlink_to(source / name)
        else:
            (other / name).symlink_to(source / name)
    header, *rows = faults.read_rows(source / "Image.csv")
    counts = {c: v for c, v in zip(header, rows[0], strict=True) if c.startswith("Count_")}
    for column, value in counts.items():  # the counts agree, so only the link can tell
        faults.set_image_value(other, column, value)
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    assert result.status == "done", result.message
    entry = _sites(result)[other.name]
    assert entry["status"] == "quarantined" and f"same file as site {source.name}'s" in entry["reason"], entry
    assert _sites(result)[source.name]["status"] == "ok"
