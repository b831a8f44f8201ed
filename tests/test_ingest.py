"""Ingest invariants: order independence, row conservation, crash safety."""

from __future__ import annotations

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
from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.ingest import discover_sites, order_by_key, plan_schema, scan_sites
from cytoprofile.synth import synth

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
        return "P1-A02-9", "identical Image.csv"
    if shape == "other-plate":
        faults.set_image_value(target, "Metadata_Plate", "P2")
        return target.name, "names plate 'P2'"
    if shape == "empty-well":
        faults.set_image_value(target, "Metadata_Well", "")
        return target.name, "Metadata_Well is empty"
    if shape == "trailing-comma-object":
        faults.trailing_comma(target, "Cells.csv")
        return target.name, "has no name (a trailing comma?)"
    faults.trailing_comma(target, "Image.csv")
    return target.name, "has no name (a trailing comma?)"


@pytest.mark.parametrize("shape", ["object-row", "image-row", "symlink", "copy", "other-plate", "empty-well",
                                   "trailing-comma-object", "trailing-comma-image"])
def test_duplicate_keys_and_foreign_sites_are_refused(tmp_path: Path, shape: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    refused, reason = _mutate_duplicate(plate_dir, shape)
    result = _collate(tmp_path, plate_dir, backend=("sqlite", "parquet"))
    entry = _sites(result)[refused]
    assert entry["status"] == "quarantined" and reason in entry["reason"], entry["reason"]
    assert [s["site"] for s in result.report["sites"] if s["status"] != "ok"] == [refused]


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


def test_object_column_named_table_number_quarantines(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1)
    folder = faults.site(plate_dir, "A01", 1)
    header = faults.read_rows(folder / "Cells.csv")[0]
    faults.rename_column(folder, "Cells", header[-1], "TableNumber")
    result = _collate(tmp_path, plate_dir)
    assert "reserves for the site key" in _sites(result)[folder.name]["reason"]


def test_columns_differing_only_in_case(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1)
    folder = faults.site(plate_dir, "A01", 1)
    header = faults.read_rows(folder / "Cells.csv")[0]
    feature = header[-1]
    faults.rename_column(folder, "Cells", header[-2], feature.lower())
    result = _collate(tmp_path, plate_dir)
    assert "differ only in case" in _sites(result)[folder.name]["reason"]
    # the same column spelled differently in two sites: the plate is refused, naming both
    other = tmp_path / "other"
    plate_dir = faults.small_plate(other, wells=1)
    faults.rename_column(faults.site(plate_dir, "A01", 1), "Cells", feature, feature.upper())
    with pytest.raises(InputError, match="differ only in case"):
        collate_plate(other, faults.BATCH, faults.PLATE)
