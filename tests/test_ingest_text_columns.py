"""Text columns: image metadata and file names repeated in object CSVs (ExportToSpreadsheet's "add image
metadata / file and folder names to your object data file" options), and Image.csv's object-mask families.

Such columns are stored as text, never aggregated, and the per-well profiles equal those of the same plate
exported without them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cytoprofile import io
from cytoprofile.aggregate import aggregate
from cytoprofile.collate import collate_plate
from cytoprofile.exportdb import collate_export
from cytoprofile.synth import synth

from . import faults
from .faults import BATCH, PLATE, read_rows, write_rows

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")
#: what ExportToSpreadsheet's two options copy from the image into each object row
IMAGE_FAMILIES = ("Metadata_", "FileName_", "PathName_", "URL_")


def _plate(ws: Path) -> Path:
    return faults.small_plate(ws, wells=2, sites=2, cells=5, features=4, seed=7)


def add_image_columns(folder: Path, *, families: tuple[str, ...] = IMAGE_FAMILIES, only: tuple[str, ...] = ()) -> None:
    """Copy Image.csv's columns of ``families`` (or the columns ``only``) into every object CSV of a site, after the
    keys, with each object row holding its image's values (as CellProfiler writes them)."""
    image = read_rows(folder / "Image.csv")
    header = image[0]
    picked = [j for j, c in enumerate(header) if (c in only if only else c.startswith(families))]
    by_number = {row[header.index("ImageNumber")]: [row[j] for j in picked] for row in image[1:] if row}
    for table in COMPARTMENTS:
        rows = read_rows(folder / f"{table}.csv")
        out = [[*rows[0][:2], *[header[j] for j in picked], *rows[0][2:]]]
        out += [[*r[:2], *by_number[r[0]], *r[2:]] for r in rows[1:] if r]
        write_rows(folder / f"{table}.csv", out)


def _profiles(result: Any) -> pd.DataFrame:
    assert result.status == "done", result.message
    return io.read_table(result.outputs["profiles"])


def _variant(folder: Path, variant: str) -> None:
    if variant == "gzip":
        faults.compress(folder)
    elif variant == "upper":
        faults.rename_files(folder, lambda n: n.upper())


@pytest.mark.parametrize("backend", ["sqlite", "parquet"])
@pytest.mark.parametrize("variant", ["plain", "gzip", "upper"])
def test_object_csvs_with_image_metadata_and_file_names_ingest(tmp_path: Path, backend: str, variant: str) -> None:
    """Metadata_ (text and numeric), FileName_, PathName_ and URL_ columns in every object CSV: the sites ingest,
    the columns are text in the object tables, and the profiles equal the plain export's."""
    plain_dir, meta_dir = _plate(tmp_path / "plain"), _plate(tmp_path / "meta")
    for folder in [*plain_dir.iterdir(), *meta_dir.iterdir()]:
        faults.add_image_column(folder, "URL_OrigDNA", f"file:///images/{folder.name}/dna.tiff")
        faults.add_image_column(folder, "Metadata_Gene", "NA")
    for folder in sorted(meta_dir.iterdir()):
        add_image_columns(folder)
    for folder in [*plain_dir.iterdir(), *meta_dir.iterdir()]:
        _variant(folder, variant)
    expected = collate_plate(tmp_path / "plain", BATCH, PLATE, backend=(backend,))
    result = collate_plate(tmp_path / "meta", BATCH, PLATE, backend=(backend,))
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    assert not [s for s in result.report["sites"] if s.get("warnings")]
    got, want = _profiles(result), _profiles(expected)
    assert not [c for c in got.columns if any(f"{t}_{f}" in c for t in COMPARTMENTS for f in IMAGE_FAMILIES)]
    pd.testing.assert_frame_equal(got, want)
    faults.assert_rows_accounted(result, meta_dir)
    text = result.report["object_text_columns"]
    assert set(text) == set(COMPARTMENTS)
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "FileName_OrigDNA", "PathName_OrigDNA",
            "URL_OrigDNA", "Metadata_Gene"} <= set(text["Cells"]["columns"])
    cells = _object_table(result.outputs, backend, "Cells")
    image = _object_table(result.outputs, backend, "Image")
    joined = cells.merge(image, on=["TableNumber", "ImageNumber"])
    assert len(joined) == len(cells) > 0
    for column in ("Metadata_Well", "Metadata_Site", "Metadata_Row", "FileName_OrigDNA", "URL_OrigDNA", "Metadata_Gene"):
        stored = joined[f"Cells_{column}"]
        assert stored.map(type).eq(str).all(), f"{column} is stored as text"
        assert (stored == joined[column].astype(str)).all()
    assert set(joined["Cells_Metadata_Gene"]) == {"NA"}  # a text token kept as written, not NULL


def _object_table(outputs: dict[str, str], backend: str, table: str) -> pd.DataFrame:
    if backend == "sqlite":
        with sqlite3.connect(outputs["sqlite"]) as conn:
            return pd.read_sql_query(f'SELECT * FROM "{table}"', conn)
    return pq.read_table(outputs["parquet"].replace("_Image.parquet", f"_{table}.parquet")).to_pandas()


def test_numeric_metadata_in_object_csvs_is_never_a_feature(tmp_path: Path) -> None:
    """Only numeric metadata copied (Metadata_Site, Metadata_Row as integers): still not a feature column."""
    plain_dir, meta_dir = _plate(tmp_path / "plain"), _plate(tmp_path / "meta")
    del plain_dir
    for folder in sorted(meta_dir.iterdir()):
        add_image_columns(folder, only=("Metadata_Site", "Metadata_Row", "Metadata_Col"))
    result = collate_plate(tmp_path / "meta", BATCH, PLATE)
    got, want = _profiles(result), _profiles(collate_plate(tmp_path / "plain", BATCH, PLATE))
    assert "Cells_Metadata_Site" not in got.columns
    pd.testing.assert_frame_equal(got, want)
    again = aggregate(result.outputs["sqlite"])  # a backend read back: its text columns are not features either
    pd.testing.assert_frame_equal(again[want.columns].reset_index(drop=True), want, check_dtype=False)
    only = collate_plate(tmp_path / "meta", BATCH, PLATE, aggregate_only=True, overwrite=True)
    pd.testing.assert_frame_equal(_profiles(only), want, check_dtype=False)


def test_object_metadata_disagreeing_with_image_csv_is_a_warning(tmp_path: Path) -> None:
    plate_dir = _plate(tmp_path)
    for folder in sorted(plate_dir.iterdir()):
        add_image_columns(folder)
    folder = faults.site(plate_dir, "A01", 1)
    faults.set_object_value(folder, "Nuclei", "Metadata_Well", "B07", row=2)
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = {s["site"]: s for s in result.report["sites"]}
    assert {s["status"] for s in sites.values()} == {"ok"}
    assert sites[folder.name]["warnings"] == [
        "Nuclei.csv: Metadata_Well is 'B07' for ImageNumber 1, but Image.csv says 'A01' (Image.csv's value is the "
        "image's; the object file's is stored as written)"]
    assert not [s for n, s in sites.items() if n != folder.name and s.get("warnings")]
    faults.assert_rows_accounted(result, plate_dir)


@pytest.mark.parametrize("without", [("A01", 1), ("A02", 2)])
def test_a_site_whose_object_files_lack_the_copies_is_not_said_to_disagree(tmp_path: Path,
                                                                            without: tuple[str, int]) -> None:
    """Copies of Image.csv columns in some sites' object files only: a site without them disagrees with nothing."""
    plate_dir = _plate(tmp_path)
    bare = faults.site(plate_dir, *without)
    for folder in sorted(plate_dir.iterdir()):
        if folder != bare:
            add_image_columns(folder)
    result = collate_plate(tmp_path, BATCH, PLATE)
    sites = {s["site"]: s for s in result.report["sites"]}
    assert {s["status"] for s in sites.values()} == {"ok"}
    assert not [n for n, s in sites.items() if s.get("warnings")], sites
    faults.assert_rows_accounted(result, plate_dir)


def test_single_cells_hold_no_copied_metadata(tmp_path: Path) -> None:
    """collate --single-cells: the object files' metadata copies are neither features nor duplicated columns."""
    _plate(tmp_path / "plain")
    meta_dir = _plate(tmp_path / "meta")
    for folder in sorted(meta_dir.iterdir()):
        add_image_columns(folder)
    got = collate_plate(tmp_path / "meta", BATCH, PLATE, single_cells=("parquet",))
    want = collate_plate(tmp_path / "plain", BATCH, PLATE, single_cells=("parquet",))

    def cells(result: Any) -> pd.DataFrame:
        assert result.status == "done", result.message
        frame = pd.read_parquet(Path(result.outputs["profiles"]).parent / f"{PLATE}_single_cells.parquet")
        keys = ["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_ObjectNumber"]
        return frame.drop(columns=["Metadata_TableNumber"]).sort_values(keys[1:]).reset_index(drop=True)

    ours, theirs = cells(got), cells(want)
    assert list(ours.columns) == list(theirs.columns)
    pd.testing.assert_frame_equal(ours, theirs)
    from cytoprofile.single_cells import write_single_cells

    joined = [pd.read_parquet(write_single_cells(r.outputs["sqlite"], prefix=tmp_path / name / PLATE,
                                                 formats=["parquet"]).outputs["parquet"]) for name, r in
              (("ours", got), ("theirs", want))]  # the single-cells command on each backend
    assert list(joined[0].columns) == list(joined[1].columns)


@pytest.mark.parametrize("layout", ["per_object_table", "per_object"])
def test_export_database_with_object_metadata_equals_without(tmp_path: Path, layout: str) -> None:
    """The ExportToDatabase route: object tables holding the copied image columns give the same profiles."""
    kw: dict[str, Any] = dict(batch=BATCH, plates=[PLATE], well_subset=2, sites=2, cells=6, features=4, seed=5,
                              export="database", export_files=2, export_layout=layout)
    synth(tmp_path / "plain", **kw)
    synth(tmp_path / "meta", object_metadata=True, **kw)
    files = sorted((tmp_path / "meta" / "analysis" / BATCH / PLATE).glob("*.sqlite"))
    table = "MyExpt_Per_Cells" if layout == "per_object_table" else "MyExpt_Per_Object"
    with sqlite3.connect(files[0]) as conn:
        columns = {r[1]: r[2] for r in conn.execute(f"PRAGMA table_info({table})")}
    assert columns["Cells_Metadata_Well"] == "TEXT" and columns["Cells_FileName_OrigDNA"] == "TEXT"
    got = collate_export(tmp_path / "meta", BATCH, PLATE)
    want = collate_export(tmp_path / "plain", BATCH, PLATE)
    pd.testing.assert_frame_equal(_profiles(got), _profiles(want))
    assert {"Metadata_Well", "FileName_OrigDNA"} <= set(got.report["object_text_columns"]["Cells"]["columns"])


def test_synth_object_metadata_is_the_shape_exports_take(tmp_path: Path) -> None:
    """synth's object_metadata writes the same cells, with the image's columns in every object CSV."""
    kw: dict[str, Any] = dict(plates=[PLATE], well_subset=2, sites=1, cells=4, features=4, seed=2)
    synth(tmp_path / "plain", **kw)
    synth(tmp_path / "meta", object_metadata=True, **kw)
    for folder in sorted((tmp_path / "plain" / "analysis" / BATCH / PLATE / "analysis").iterdir()):
        add_image_columns(folder, families=("Metadata_", "FileName_", "PathName_"))
        other = tmp_path / "meta" / "analysis" / BATCH / PLATE / "analysis" / folder.name
        for table in COMPARTMENTS:
            ours = pd.read_csv(other / f"{table}.csv")
            theirs = pd.read_csv(folder / f"{table}.csv")
            pd.testing.assert_frame_equal(ours[sorted(ours.columns)], theirs[sorted(theirs.columns)])


@pytest.mark.parametrize("variant", ["plain", "gzip"])
def test_image_object_mask_families_are_text(tmp_path: Path, variant: str) -> None:
    """Image.csv's ObjectsFileName_, ObjectsPathName_, ObjectsURL_ (saved object masks) are text; Height_ and Width_
    stay numbers; the profiles are unchanged."""
    plain_dir, mask_dir = _plate(tmp_path / "plain"), _plate(tmp_path / "masks")
    for folder in sorted(mask_dir.iterdir()):
        faults.add_image_column(folder, "ObjectsFileName_Cells", f"{folder.name}_cells.tiff")
        faults.add_image_column(folder, "ObjectsPathName_Cells", "/masks/2024-01-01")
        faults.add_image_column(folder, "ObjectsURL_Cells", f"file:///masks/{folder.name}_cells.tiff")
        faults.add_image_column(folder, "ObjectsFileName_Nuclei", "0001")  # digits only: still a name
        faults.add_image_column(folder, "Height_OrigDNA", "1080")
        faults.add_image_column(folder, "Width_OrigDNA", "1080")
    for folder in [*plain_dir.iterdir(), *mask_dir.iterdir()]:
        _variant(folder, variant)
    result = collate_plate(tmp_path / "masks", BATCH, PLATE, backend=("sqlite", "parquet"))
    assert {s["status"] for s in result.report["sites"]} == {"ok"}
    pd.testing.assert_frame_equal(_profiles(result), _profiles(collate_plate(tmp_path / "plain", BATCH, PLATE)))
    with sqlite3.connect(result.outputs["sqlite"]) as conn:
        types = {r[1]: r[2] for r in conn.execute('PRAGMA table_info("Image")')}
        first = conn.execute('SELECT ObjectsFileName_Nuclei, Height_OrigDNA FROM "Image" LIMIT 1').fetchone()
    assert [types[c] for c in ("ObjectsFileName_Cells", "ObjectsPathName_Cells", "ObjectsURL_Cells",
                               "ObjectsFileName_Nuclei")] == ["TEXT"] * 4
    assert types["Height_OrigDNA"] == types["Width_OrigDNA"] == "INTEGER"
    assert first == ("0001", 1080)
    schema = pq.read_schema(result.outputs["parquet"])
    assert str(schema.field("ObjectsURL_Cells").type) == "string"
    faults.assert_rows_accounted(result, mask_dir)
