"""Backend stores: any table name a site folder can hold, exact integer keys, column-family Image types."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from cytoprofile.aggregate import aggregate
from cytoprofile.backend import object_column_name, open_backend, quote
from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.layout import parquet_table_path

from . import faults


def test_names_in_the_old_layout() -> None:
    assert quote("Cells") == '"Cells"' and quote('x"y') == '"x""y"'  # a quote in a header is doubled
    assert [object_column_name("Nuclei", c) for c in ("ImageNumber", "ObjectNumber", "TableNumber", "AreaShape_Area")] == [
        "ImageNumber", "ObjectNumber", "TableNumber", "Nuclei_AreaShape_Area"]
    assert parquet_table_path("out/P1", "Cells") == "out/P1_Cells.parquet"


def _not_a_database(folder: Path) -> Path:
    (folder / "P1.sqlite").write_bytes(b"not a database" * 100)
    return folder / "P1.sqlite"


def _no_image_table(folder: Path) -> Path:
    with sqlite3.connect(folder / "P1.sqlite") as conn:
        conn.execute("CREATE TABLE Cells (x)")
    return folder / "P1.sqlite"


@pytest.mark.parametrize(("make", "message"), [
    (lambda folder: folder / "P1.sqlite", "backend not found"),
    (lambda folder: folder / "P1_Image.parquet", "backend not found"),
    (_not_a_database, "not an SQLite database"),
    (_no_image_table, "has no Image table"),
])
def test_open_backend_names_what_is_wrong(tmp_path: Path, make: Callable[[Path], Path], message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        open_backend(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["Cells - Copy", "Cells (2)", "Nuclei.old", "x'y"])
@pytest.mark.parametrize("kind", ["sqlite", "parquet"])
def test_table_named_like_a_stray_file_is_stored_and_read_back(tmp_path: Path, name: str, kind: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        faults.add_object_table(folder, name, like="Cells")
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE, backend=(kind,))  # type: ignore[arg-type]
    faults.assert_rows_accounted(result, plate_dir)
    path = result.outputs[kind]
    reader = open_backend(path)
    try:
        assert name in reader.object_tables()
        image = reader.image()
        pairs = list(zip(image["TableNumber"], image["ImageNumber"]))
        rows = reader.read_objects(name, ["ObjectNumber", f"{name}_AreaShape_Area"], pairs)
        assert len(rows) == result.report["tables"][name]["rows_in"] == result.report["tables"]["Cells"]["rows_in"]  # type: ignore[index]
    finally:
        reader.close()
    # the stray table aggregates like any other when asked for
    profiles = aggregate(path, compartments=[name], image_features=False)
    assert any(c.startswith(f"{name}_") for c in profiles.columns)
    assert int(profiles["Metadata_Object_Count"].sum()) == len(rows)


def test_keys_are_stored_as_exact_integers(tmp_path: Path) -> None:
    plate_dir = faults.small_plate(tmp_path, wells=1, sites=1)
    target = faults.site(plate_dir)
    big = 2**53
    faults.set_object_value(target, "Nuclei", "ObjectNumber", str(big))
    faults.set_object_value(target, "Cells", "Parent_Nuclei", str(big))
    faults.set_object_value(target, "Cytoplasm", "Parent_Nuclei", str(big))
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE, backend=("sqlite", "parquet"))
    faults.assert_rows_accounted(result, plate_dir)
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        assert conn.execute("SELECT typeof(ObjectNumber), typeof(ImageNumber), typeof(TableNumber) FROM Nuclei").fetchall()[0] == \
            ("integer", "integer", "integer")
        assert conn.execute("SELECT MAX(ObjectNumber) FROM Nuclei").fetchone()[0] == big
        assert conn.execute("SELECT MAX(Cells_Parent_Nuclei) FROM Cells").fetchone()[0] == big
    finally:
        conn.close()
    nuclei = pq.read_table(Path(result.outputs["parquet"]).parent / "P1_Nuclei.parquet")
    assert str(nuclei.schema.field("ObjectNumber").type) == "int64"
    assert big in nuclei.column("ObjectNumber").to_pylist()


def _collated(ws: Path, plate_dir: Path, kind: str) -> Any:
    result = collate_plate(ws, faults.BATCH, faults.PLATE, backend=(kind,))  # type: ignore[arg-type]
    faults.assert_rows_accounted(result, plate_dir)
    return result


def _query(path: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _declared(path: str) -> dict[str, str]:
    return {r[1]: r[2] for r in _query(path, "PRAGMA table_info(Image)")}


@pytest.mark.parametrize("kind", ["sqlite", "parquet"])
def test_image_types_follow_the_column_family(tmp_path: Path, kind: str) -> None:
    plate_dir = faults.small_plate(tmp_path)
    first = faults.site(plate_dir, "A01", 1)
    faults.set_image_value(first, "Granularity_1_DNA", "")  # NULL in the site that sorts first
    faults.add_image_column(first, "Metadata_Batch", "2021")  # looks numeric here, text elsewhere: Metadata_ is text
    faults.add_image_column(faults.site(plate_dir, "A02", 2), "Metadata_Batch", "batch-2")
    result = _collated(tmp_path, plate_dir, kind)
    if kind == "sqlite":
        declared = _declared(result.outputs["sqlite"])
        stored = {r[0] for r in _query(result.outputs["sqlite"], "SELECT typeof(Metadata_Batch) FROM Image WHERE Metadata_Batch IS NOT NULL")}
        numbers = {r[0] for r in _query(result.outputs["sqlite"], "SELECT typeof(Granularity_1_DNA) FROM Image WHERE Granularity_1_DNA IS NOT NULL")}
        assert declared["Metadata_Batch"] == "TEXT" and stored == {"text"}
        assert declared["Granularity_1_DNA"] == "FLOAT" and numbers == {"real"}
        assert declared["Metadata_Site"] == "TEXT"
    else:
        schema = pq.read_schema(result.outputs["parquet"])
        assert str(schema.field("Metadata_Batch").type) == "string"
        assert str(schema.field("Granularity_1_DNA").type) == "double"


@pytest.mark.parametrize("kind", ["sqlite", "parquet"])
@pytest.mark.parametrize("column", ["Metadata_Barcode", "FileName_Extra", "URL_Extra"])
@pytest.mark.parametrize("lacking", [("A01", 1), ("A01", 2)])
def test_a_text_column_the_first_site_lacks_keeps_its_text(tmp_path: Path, kind: str, column: str,
                                                           lacking: tuple[str, int]) -> None:
    """The first site written types the Image table: a text column it lacks is TEXT, ``007`` stays ``007``."""
    plate_dir = faults.small_plate(tmp_path)
    sites = [faults.site(plate_dir, w, n) for w in ("A01", "A02") for n in (1, 2)]
    for folder in sites:
        if folder.name.endswith(f"{lacking[0]}-{lacking[1]}") or folder == sites[0]:
            continue
        faults.add_image_column(folder, column, "007")
    result = _collated(tmp_path, plate_dir, kind)
    if kind == "sqlite":
        stored = [r[0] for r in _query(result.outputs["sqlite"], f"SELECT {column} FROM Image WHERE {column} IS NOT NULL")]
        assert _declared(result.outputs["sqlite"])[column] == "TEXT"
    else:
        stored = [v for v in pq.read_table(result.outputs["parquet"], columns=[column]).column(0).to_pylist() if v]
    assert stored and set(stored) == {"007"}


def test_a_table_over_sqlite_width_with_its_text_columns_is_one_line(tmp_path: Path) -> None:
    """The text columns an object CSV repeats count toward SQLite's column limit (they were left out: exit 3)."""
    from cytoprofile.synth import synth

    synth(tmp_path, plates=[faults.PLATE], wells=96, well_subset=1, sites=1, cells=3, features=1990, object_metadata=True)
    with pytest.raises(InputError, match=r"Cells has \d+ columns, more than SQLite's limit of 2000; use --backend parquet"):
        collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    assert not list((tmp_path / "backend").rglob("*.sqlite"))


@pytest.mark.parametrize("kind", ["sqlite", "parquet"])
def test_reader_lists_only_data_tables(tmp_path: Path, kind: str) -> None:
    """The build's generation table and the joined single-cell file are not object tables."""
    from cytoprofile.backend import BackendReader
    from cytoprofile.ingest import RESERVED_TABLES

    faults.small_plate(tmp_path)
    result = collate_plate(tmp_path, faults.BATCH, faults.PLATE, backend=(kind,))  # type: ignore[arg-type]
    path = result.outputs[kind]
    if kind == "parquet":
        (Path(path).parent / f"{faults.PLATE}_single_cells.parquet").write_bytes(Path(path).read_bytes())
    reader = BackendReader(path)
    assert not set(reader.tables) & set(RESERVED_TABLES)
    assert {"Image", "Cells", "Cytoplasm", "Nuclei"} <= set(reader.tables)


def test_sqlite_rows_of_thousands_of_features_stay_on_one_page(tmp_path: Path) -> None:
    """64 KB pages: a JUMP-width object row (~15 KB) needs no overflow chain; the file stays plain SQLite."""
    from cytoprofile.synth import synth

    synth(tmp_path, plates=["P1"], wells=96, well_subset=1, sites=1, cells=4, features=600)
    result = collate_plate(tmp_path, "BATCH1", "P1")
    conn = sqlite3.connect(result.outputs["sqlite"])
    try:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 65536
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        width = len(conn.execute("SELECT * FROM Cells LIMIT 1").fetchone())
        assert width > 600
    finally:
        conn.close()
