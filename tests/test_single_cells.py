"""Joined single-cell tables: equal to the reference merge, every unlinked object named, files that open."""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cytoprofile.collate import collate_plate
from cytoprofile.errors import InputError
from cytoprofile.single_cells import (
    SingleCellJoin,
    feature_annotation,
    single_cells,
    write_single_cells,
)
from cytoprofile.synth import synth

from .conftest import link_sites
from .reference import pycytominer_merge

KEYS = ["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_ObjectNumber_cytoplasm"]
JUMP_SITES = "jump-BR00121431/analysis/2021_04_20_Target2/BR00121431/analysis"


def assert_same_cells(ours: pd.DataFrame, ref: pd.DataFrame, *, rename: dict[str, str] | None = None) -> None:
    """Same columns (ours: Metadata first), same rows after sorting by keys, same values."""
    ref = ref.rename(columns=rename or {})
    assert sorted(ours.columns) == sorted(ref.columns)
    meta = [c for c in ours.columns if c.startswith("Metadata_")]
    assert list(ours.columns[: len(meta)]) == meta  # metadata first
    assert len(ours) == len(ref)
    ours = ours.sort_values(KEYS).reset_index(drop=True)
    ref = ref.astype({k: type(ours[k].iloc[0]) if len(ours) else object for k in KEYS}).sort_values(KEYS).reset_index(drop=True)
    for c in meta:
        if pd.api.types.is_numeric_dtype(ours[c]):
            np.testing.assert_array_equal(ours[c].to_numpy(float), ref[c].astype(float).to_numpy(), err_msg=c)
        else:
            assert ours[c].astype(str).tolist() == ref[c].astype(str).tolist(), c
    feats = [c for c in ours.columns if c not in meta]
    np.testing.assert_array_equal(ours[feats].to_numpy(float), ref[feats].to_numpy(float))


def _plate(tmp_path: Path, *, wells: int, sites: int, cells: int, features: int, kind: str = "sqlite", seed: int = 0) -> Path:
    synth(tmp_path, plates=["P1"], wells=96, well_subset=wells, sites=sites, cells=cells, features=features, seed=seed)
    result = collate_plate(tmp_path, "BATCH1", "P1", backend=("sqlite", "parquet"))
    return Path(result.outputs["sqlite"] if kind == "sqlite" else result.outputs["parquet"])


@pytest.mark.parametrize(("wells", "sites", "cells", "features", "seed"), [(2, 2, 5, 6, 0), (6, 3, 30, 25, 1), (1, 1, 3, 3, 2)])
def test_synthetic_plates_equal_reference_merge(tmp_path: Path, wells: int, sites: int, cells: int, features: int, seed: int) -> None:
    sqlite_backend = _plate(tmp_path, wells=wells, sites=sites, cells=cells, features=features, seed=seed)
    ref = pycytominer_merge(sqlite_backend, ["Metadata_Plate", "Metadata_Well"], ["TableNumber", "ImageNumber", "Metadata_Site"])
    ours = single_cells(sqlite_backend).to_pandas()
    assert_same_cells(ours, ref)
    # the Parquet backend of the same plate gives the same table, row for row
    parquet = single_cells(sqlite_backend.with_name("P1_Image.parquet")).to_pandas()
    pd.testing.assert_frame_equal(parquet, ours)


def test_legacy_image_prefixed_backend_equals_stored_reference_merge(shared_data: Path) -> None:
    backend = shared_data / "legacy-backends/test_SQ00014613.sqlite"
    stored = pd.read_csv(shared_data / "legacy-backends/test_SQ00014613.csv.gz")
    ours = single_cells(backend, metadata=["Metadata_Plate", "Metadata_Well"]).to_pandas()
    assert ours["Metadata_TableNumber"].dtype == object or pd.api.types.is_string_dtype(ours["Metadata_TableNumber"])
    rename = {"Image_Metadata_Plate": "Metadata_Plate", "Image_Metadata_Well": "Metadata_Well"}
    assert_same_cells(ours, stored, rename=rename)
    live = pycytominer_merge(backend, ["Image_Metadata_Plate", "Image_Metadata_Well"], ["TableNumber", "ImageNumber"])
    assert_same_cells(ours, live, rename=rename)


def test_one_compartment_legacy_backend(shared_data: Path) -> None:
    backend = shared_data / "legacy-backends/test_BR00126114.sqlite"
    ours = single_cells(backend, compartments=["Nuclei"]).to_pandas()
    conn = sqlite3.connect(backend)
    nuclei = pd.read_sql_query("SELECT * FROM Nuclei", conn)
    image = pd.read_sql_query("SELECT * FROM Image", conn)
    conn.close()
    expected = nuclei.merge(image, on=["TableNumber", "ImageNumber"]).astype({"ImageNumber": int, "ObjectNumber": int})
    assert len(ours) == 20
    assert list(ours.columns[:6]) == ["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_Plate", "Metadata_Well",
                                      "Metadata_Site", "Metadata_ObjectNumber"]
    expected = expected.sort_values(["TableNumber", "ImageNumber", "ObjectNumber"]).reset_index(drop=True)
    ours = ours.sort_values(["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_ObjectNumber"]).reset_index(drop=True)
    np.testing.assert_array_equal(ours["Nuclei_Location_Center_X"].to_numpy(float), expected["Nuclei_Location_Center_X"].to_numpy(float))
    assert ours["Metadata_Well"].tolist() == expected["Metadata_Well"].tolist()


def test_jump_sites_equal_reference_merge(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / JUMP_SITES
    link_sites(tmp_path, "B", "BR00121431", {n: root / n for n in ("BR00121431-A01-1", "BR00121431-A02-1")})
    result = collate_plate(tmp_path, "B", "BR00121431")
    backend = Path(result.outputs["sqlite"])
    ref = pycytominer_merge(backend, ["Metadata_Plate", "Metadata_Well"], ["TableNumber", "ImageNumber", "Metadata_Site"])
    ours = single_cells(backend).to_pandas()
    assert len(ours) > 100 and ours.shape[1] > 5000
    assert_same_cells(ours, ref)


def _break_links(backend: Path) -> tuple[int, int]:
    """Point one Cytoplasm at a missing nucleus and remove one Cells row: two cells lose their partner."""
    conn = sqlite3.connect(backend)
    tn, img, obj = conn.execute("SELECT TableNumber, ImageNumber, ObjectNumber FROM Cytoplasm ORDER BY rowid LIMIT 1").fetchone()
    conn.execute("UPDATE Cytoplasm SET Cytoplasm_Parent_Nuclei = 9999 WHERE TableNumber=? AND ImageNumber=? AND ObjectNumber=?", (tn, img, obj))
    row = conn.execute("SELECT TableNumber, ImageNumber, ObjectNumber FROM Cells ORDER BY rowid DESC LIMIT 1").fetchone()
    conn.execute("DELETE FROM Cells WHERE TableNumber=? AND ImageNumber=? AND ObjectNumber=?", row)
    conn.commit()
    conn.close()
    return obj, row[2]


def test_unlinked_objects_are_counted_and_named(tmp_path: Path) -> None:
    backend = _plate(tmp_path, wells=2, sites=2, cells=6, features=4)
    cyto_obj, cells_obj = _break_links(backend)
    report = write_single_cells(backend, prefix=tmp_path / "out" / "P1")
    ref = pycytominer_merge(backend, ["Metadata_Plate", "Metadata_Well"], ["TableNumber", "ImageNumber", "Metadata_Site"])
    ours = pd.read_parquet(tmp_path / "out" / "P1_single_cells.parquet")
    assert_same_cells(ours, ref)  # the same inner join ...
    total = report.rows_in["Cytoplasm"]
    assert report.cells_out == len(ours) == total - 2  # ... and the two lost cells are accounted for
    assert report.unlinked["Cytoplasm"] == 2
    assert report.unlinked["Nuclei"] == 2 and report.unlinked["Cells"] == 1  # orphaned partners too
    named = json.loads((tmp_path / "out" / "P1_single_cells.report.json").read_text())["unlinked_objects"]
    reasons = {(o["compartment"], o["ObjectNumber"], o["reason"]) for o in named}
    assert ("Cytoplasm", cyto_obj, "Cytoplasm_Parent_Nuclei links to no Nuclei object") in reasons
    assert len(named) == 5
    assert sum(report.rows_in.values()) == 3 * len(ours) + report.lost


def test_parquet_and_anndata_outputs(tmp_path: Path) -> None:
    import anndata

    backend = _plate(tmp_path, wells=3, sites=2, cells=8, features=12, kind="parquet")
    report = write_single_cells(backend, formats=["parquet", "anndata"], metadata="all", row_group_values=1)
    prefix = str(backend)[: -len("_Image.parquet")]
    table = pq.ParquetFile(f"{prefix}_single_cells.parquet")
    assert table.metadata.num_row_groups == 6  # whole sites: one each when a site exceeds the row group size
    sizes = [table.metadata.row_group(g).num_rows for g in range(6)]
    sites = table.read(columns=["Metadata_TableNumber"]).column(0).to_pylist()
    assert sizes == [sites.count(t) for t in dict.fromkeys(sites)]
    assert table.metadata.row_group(0).column(0).compression == "ZSTD"
    df = table.read().to_pandas()
    assert report.cells_out == len(df) and report.sites == 6
    assert report.rows_in == {"Cytoplasm": len(df), "Cells": len(df), "Nuclei": len(df)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = anndata.read_h5ad(f"{prefix}_single_cells.h5ad")
    features = [c for c in df.columns if not c.startswith("Metadata_")]
    assert adata.shape == (len(df), len(features)) and adata.X.dtype == np.float32
    assert list(adata.var_names) == features
    np.testing.assert_allclose(adata.X, df[features].to_numpy(float), rtol=1e-6)
    for key in ("Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber_cytoplasm"):
        assert adata.obs[key].astype(str).tolist() == df[key].astype(str).tolist()
    assert adata.var.loc["Cells_Intensity_MeanIntensity_DNA", "channel"] == "DNA"
    assert set(adata.var["compartment"]) == {"Cells", "Cytoplasm", "Nuclei"}
    assert adata.obs_names.is_unique
    write_single_cells(backend, metadata="all", row_group_values=2 * len(df) // 6 * table.metadata.num_columns)  # about two sites
    grouped = pq.ParquetFile(f"{prefix}_single_cells.parquet")
    assert 1 < grouped.metadata.num_row_groups < 6
    pd.testing.assert_frame_equal(grouped.read().to_pandas(), df)


def test_write_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _plate(tmp_path, wells=2, sites=2, cells=4, features=4)
    calls = {"n": 0}
    real = SingleCellJoin.join_site

    def failing(self: SingleCellJoin, tn: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, tn, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(SingleCellJoin, "join_site", failing)
    with pytest.raises(OSError):
        write_single_cells(backend, formats=["parquet", "anndata"])
    assert not [p.name for p in backend.parent.iterdir() if "single_cells" in p.name]


def test_bad_options_are_input_errors(tmp_path: Path) -> None:
    backend = _plate(tmp_path, wells=1, sites=1, cells=3, features=3)
    with pytest.raises(InputError, match="no Organelles table"):
        single_cells(backend, compartments=["Cells", "Cytoplasm", "Organelles"])
    with pytest.raises(InputError, match="no Metadata_Batch"):
        single_cells(backend, metadata=["Metadata_Batch"])
    with pytest.raises(InputError, match="no link column Cytoplasm_Parent_Nuclei"):
        _drop_link(backend)
        single_cells(backend)


def _drop_link(backend: Path) -> None:
    conn = sqlite3.connect(backend)
    conn.execute("ALTER TABLE Cytoplasm DROP COLUMN Cytoplasm_Parent_Nuclei")
    conn.commit()
    conn.close()


def test_image_features_and_custom_links(tmp_path: Path) -> None:
    backend = _plate(tmp_path, wells=1, sites=2, cells=4, features=4)
    conn = sqlite3.connect(backend)
    image_cols = [r[1] for r in conn.execute("PRAGMA table_info(Image)")]
    conn.close()
    table = single_cells(backend, image_feature_categories=["Count"]).to_pandas()
    counts = [c for c in image_cols if c.startswith("Count_")]
    assert counts and [f"Image_{c}" for c in counts] == [c for c in table.columns if c.startswith("Image_")]
    # Cells as the hub with Nuclei linked through Cells_Parent_Nuclei
    two = single_cells(backend, compartments=["Cells", "Nuclei"], hub="Cells", links={"Nuclei": "Cells_Parent_Nuclei"}).to_pandas()
    assert "Metadata_Cells_Parent_Nuclei" in two.columns and "Cells_Parent_Nuclei" not in two.columns
    assert len(two) == len(table)


@pytest.mark.parametrize("links", [{"Cells": "Cytoplasm_Parent_Nuclei"}, {"Nuclei": "Cytoplasm_Parent_Cells"}])
def test_two_compartments_linked_through_one_column_are_refused(tmp_path: Path, links: dict[str, str]) -> None:
    """One link column for two compartments gave a Parquet file with a column twice (pandas cannot read it)."""
    backend = _plate(tmp_path, wells=1, sites=1, cells=4, features=3)
    with pytest.raises(InputError, match=r"--links: Cells and Nuclei are both linked through Cytoplasm_Parent_"):
        single_cells(backend, links=links)


@pytest.mark.parametrize(("name", "expected"), [
    ("Cells_Intensity_MeanIntensity_DNA", ("Cells", "Intensity", "DNA")),
    ("Nuclei_Texture_Contrast_ER_3_01_256", ("Nuclei", "Texture", "ER")),
    ("Cytoplasm_Granularity_12_Mito", ("Cytoplasm", "Granularity", "Mito")),
    ("Cells_RadialDistribution_FracAtD_RNA_2of4", ("Cells", "RadialDistribution", "RNA")),
    ("Cells_Correlation_Correlation_AGP_DNA", ("Cells", "Correlation", "AGP_DNA")),
    ("Cells_AreaShape_Area", ("Cells", "AreaShape", "")),
    ("Nuclei_Location_Center_X", ("Nuclei", "Location", "")),
    ("Nuclei_Location_CenterMassIntensity_X_DNA", ("Nuclei", "Location", "DNA")),
    ("Cells_Cellpose3_AreaShape_Area", ("Cells_Cellpose3", "AreaShape", "")),
    ("Image_Granularity_1_DNA", ("Image", "Granularity", "DNA")),
])
def test_feature_annotation(name: str, expected: tuple[str, str, str]) -> None:
    got = feature_annotation(name, ["Cells", "Cells_Cellpose3", "Nuclei", "Cytoplasm", "Image"])
    assert (got["compartment"], got["measurement"], got["channel"]) == expected


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_aggregate_cells_matches_reference_and_streaming_engine(tmp_path: Path, operation: str) -> None:
    from pycytominer import aggregate as reference_aggregate

    from cytoprofile.aggregate import aggregate, aggregate_cells

    backend = _plate(tmp_path, wells=4, sites=2, cells=12, features=8)
    cells = single_cells(backend).to_pandas()
    ours = aggregate_cells(cells, strata=["Metadata_Plate", "Metadata_Well"], features="infer", operation=operation,  # type: ignore[arg-type]
                           compute_object_count=True, object_feature="Metadata_ObjectNumber")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_aggregate(cells, strata=["Metadata_Plate", "Metadata_Well"], features="infer", operation=operation,
                                  compute_object_count=True, object_feature="Metadata_ObjectNumber")
    assert list(ours.columns) == list(ref.columns)
    assert ours["Metadata_Object_Count"].tolist() == ref["Metadata_Object_Count"].tolist()
    feats = [c for c in ref.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(ours[feats].to_numpy(float), ref[feats].to_numpy(float), rtol=1e-12)
    streamed = aggregate(backend, operation=operation, image_features=False)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours[feats].to_numpy(float), streamed[feats].to_numpy(float))
    assert ours["Metadata_Object_Count"].tolist() == streamed["Metadata_Object_Count"].tolist()


def test_aggregate_cells_hand_computed() -> None:
    from cytoprofile.aggregate import aggregate_cells

    df = pd.DataFrame({"Metadata_Well": ["B01", "A01", "A01", "A01"], "Metadata_ObjectNumber": [1, 1, 2, 3],
                       "Cells_a": [5.0, 1.0, np.nan, 3.0], "Nuclei_b": [1.0, 2.0, 4.0, 9.0], "Other": ["x"] * 4})
    out = aggregate_cells(df, strata=["Metadata_Well"], compute_object_count=True)
    assert out.columns.tolist() == ["Metadata_Well", "Metadata_Object_Count", "Cells_a", "Nuclei_b"]
    assert out.values.tolist() == [["A01", 3, 2.0, 4.0], ["B01", 1, 5.0, 1.0]]
    with pytest.raises(InputError, match="Metadata_Plate"):
        aggregate_cells(df)


def test_load_profiles_reads_every_format_alike(tmp_path: Path) -> None:
    from cytoprofile.io import load_profiles, write_table

    backend = _plate(tmp_path, wells=2, sites=2, cells=5, features=5)
    report = write_single_cells(backend, formats=["parquet", "anndata"])
    parquet = load_profiles(report.outputs["parquet"])
    h5ad = load_profiles(report.outputs["anndata"])
    assert list(h5ad.columns) == list(parquet.columns) and len(h5ad) == len(parquet)
    feats = [c for c in parquet.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(h5ad[feats].to_numpy(float), parquet[feats].to_numpy(float), rtol=1e-6)
    assert h5ad["Metadata_Well"].astype(str).tolist() == parquet["Metadata_Well"].tolist()
    from pycytominer.cyto_utils.load import load_profiles as reference_load

    theirs = reference_load(report.outputs["anndata"])  # the reference reader opens our AnnData too
    assert list(theirs.columns) == list(h5ad.columns)
    np.testing.assert_array_equal(theirs[feats].to_numpy(float), h5ad[feats].to_numpy(float))
    write_table(parquet, tmp_path / "cells.csv.gz")
    csv = load_profiles(tmp_path / "cells.csv.gz")
    np.testing.assert_allclose(csv[feats].to_numpy(float), parquet[feats].to_numpy(float))
    with pytest.raises(InputError, match="no such file"):
        load_profiles(tmp_path / "absent.parquet")


def test_plates_strict_names_unlinked_after_writing_every_plate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unlinked objects in one plate: every plate is still written and handed on; --strict then fails naming
    that plate and how many objects, without it the run succeeds."""
    from cytoprofile.cli import main
    from cytoprofile.errors import CytoprofileError
    from cytoprofile.single_cells import write_plates_single_cells

    synth(tmp_path, plates=["P1", "P2"], wells=96, well_subset=2, sites=2, cells=6, features=4)
    for plate in ("P1", "P2"):
        collate_plate(tmp_path, "BATCH1", plate, backend=("sqlite",))
    _break_links(tmp_path / "backend/BATCH1/P2/P2.sqlite")
    seen: list[str] = []
    with pytest.raises(CytoprofileError, match=r"not linked into cells .*: P2 \(5\)$"):
        write_plates_single_cells(tmp_path, "BATCH1", ["P1", "P2"], strict=True, done=lambda p, _r: seen.append(p))
    assert seen == ["P1", "P2"]
    reports = write_plates_single_cells(tmp_path, "BATCH1", ["P2", "P1"], backend="sqlite")
    assert [r.lost for r in reports] == [5, 0]
    capsys.readouterr()
    assert main(["single-cells", str(tmp_path), "BATCH1", "P1", "P2", "--strict", "-q"]) == 1
    printed = capsys.readouterr().out.split()
    assert [os.path.basename(p) for p in printed] == ["P1_single_cells.parquet", "P2_single_cells.parquet"]
    assert main(["single-cells", str(tmp_path), "BATCH1", "P1", "P2", "-q"]) == 0


def test_plates_take_the_single_backend_options_and_no_other(tmp_path: Path) -> None:
    """write_plates_single_cells hands write_single_cells' options to every plate (names and defaults are its);
    one it does not take per plate (a prefix would put every plate in one file) is refused before any is written."""
    from cytoprofile.single_cells import write_plates_single_cells

    synth(tmp_path, plates=["P1", "P2"], wells=96, well_subset=2, sites=1, cells=4, features=3)
    for plate in ("P1", "P2"):
        collate_plate(tmp_path, "BATCH1", plate, backend=("sqlite",))
    with pytest.raises(TypeError, match="'prefix'"):
        write_plates_single_cells(tmp_path, "BATCH1", ["P1", "P2"], prefix=tmp_path / "one")
    assert not list(tmp_path.rglob("*_single_cells.*"))
    reports = write_plates_single_cells(tmp_path, "BATCH1", ["P1", "P2"], formats=["anndata"], compartments=["Cells"],
                                        metadata="all", threads=0)
    for plate, report in zip(("P1", "P2"), reports):
        assert set(report.outputs) == {"anndata"} and report.outputs["anndata"].endswith(f"{plate}_single_cells.h5ad")
    assert not list(tmp_path.rglob("*_single_cells.parquet"))


def test_cli_single_cells_and_cell_qc(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=10, features=12)
    collate_plate(ws, "BATCH1", "P1", backend=("sqlite",))
    assert main(["single-cells", str(ws), "BATCH1", "P1", "--format", "parquet", "--format", "anndata", "--cell-qc", "-q"]) == 0
    out = ws / "backend/BATCH1/P1"
    df = pd.read_parquet(out / "P1_single_cells.parquet")
    assert (out / "P1_single_cells.h5ad").is_file() and "Metadata_cqc_large_nuclei_is_outlier" in df.columns
    report = json.loads((out / "P1_single_cells.report.json").read_text())
    assert report["cells_out"] == len(df) and report["cell_qc"]["cells"] == len(df)
    assert main(["cell-qc", str(out / "P1_single_cells.parquet"), "--output", str(tmp_path / "f.parquet"),
                 "--qc-sets", "elongated_nuclei", "-q"]) == 0
    assert "Metadata_cqc_elongated_nuclei_is_outlier" in pd.read_parquet(tmp_path / "f.parquet").columns
    assert main(["single-cells", str(ws), "BATCH1", "NOPLATE", "-q"]) == 1
    assert main(["single-cells", str(ws), "BATCH1", "P1", "--links", "Nuclei", "-q"]) == 1
    assert main(["cell-qc", str(tmp_path / "f.parquet"), "--qc-sets", "huge", "-q"]) == 1


def test_stream_fed_site_by_site_equals_join_from_backend(tmp_path: Path) -> None:
    """The collate path: sites handed over as read from the CSVs give the same table as the backend join."""
    from cytoprofile.backend import object_column_name
    from cytoprofile.ingest import (
        IMAGE_TABLE,
        Quarantine,
        discover_sites,
        plan_schema,
        read_sites,
        scan_sites,
    )
    from cytoprofile.single_cells import SingleCellStream

    backend = _plate(tmp_path, wells=3, sites=2, cells=7, features=6)
    sites = discover_sites(tmp_path / "analysis/BATCH1/P1/analysis")
    scans = scan_sites(sites, plate="P1")
    schema = plan_schema(scans, plate="P1", strata=["Metadata_Plate", "Metadata_Well"])
    tables = {t: ["TableNumber", *[object_column_name(t, c) for c in cols]] for t, cols in schema.tables.items() if t != IMAGE_TABLE}
    tables[IMAGE_TABLE] = list(schema.tables[IMAGE_TABLE])
    stream = SingleCellStream(tmp_path / "stream" / "P1", tables, formats=["parquet", "anndata"])
    for site in read_sites(scans, schema):
        assert not isinstance(site, Quarantine)
        stream.add(site.table_number, site.image.to_pandas(), site.objects)
    report = stream.close()
    streamed = pd.read_parquet(report.outputs["parquet"])
    joined = single_cells(backend).to_pandas()
    assert report.cells_out == len(joined) and report.rows_in == {"Cytoplasm": len(joined), "Cells": len(joined), "Nuclei": len(joined)}
    order = ["Metadata_TableNumber", "Metadata_ImageNumber", "Metadata_ObjectNumber_cytoplasm"]
    pd.testing.assert_frame_equal(streamed.sort_values(order).reset_index(drop=True), joined.sort_values(order).reset_index(drop=True))


@pytest.mark.parametrize("first", [True, False])
def test_site_without_cells_is_counted(tmp_path: Path, first: bool) -> None:
    backend = _plate(tmp_path, wells=2, sites=2, cells=5, features=4)
    conn = sqlite3.connect(backend)
    order = [r[0] for r in conn.execute("SELECT TableNumber FROM Image ORDER BY rowid")]
    empty = order[0] if first else order[-1]
    n_cells = conn.execute("SELECT COUNT(*) FROM Cells WHERE TableNumber=?", (empty,)).fetchone()[0]
    conn.execute("DELETE FROM Cytoplasm WHERE TableNumber=?", (empty,))
    conn.commit()
    conn.close()
    report = write_single_cells(backend, formats=["parquet", "anndata"])
    df = pd.read_parquet(report.outputs["parquet"])
    assert empty not in set(df["Metadata_TableNumber"]) and report.sites == 4
    assert report.sites_without_cells == [str(empty)]
    assert report.unlinked == {"Cells": n_cells, "Nuclei": n_cells}
    assert df["Metadata_Well"].notna().all()


# ---------------------------------------------------------------- collate --single-cells (the same pass)


@pytest.mark.parametrize(("wells", "sites", "cells", "features", "kinds", "formats"), [
    (2, 2, 6, 5, ("sqlite",), ("parquet",)),
    (4, 3, 25, 12, ("parquet",), ("parquet", "anndata")),
    (1, 1, 3, 3, ("sqlite", "parquet"), ("anndata", "parquet")),
])
def test_collate_single_cells_equal_single_cells_command_and_reference(
        tmp_path: Path, wells: int, sites: int, cells: int, features: int, kinds: tuple[str, ...], formats: tuple[str, ...]) -> None:
    from cytoprofile.collate import trusted_outputs

    synth(tmp_path, plates=["P1"], wells=96, well_subset=wells, sites=sites, cells=cells, features=features, seed=wells)
    result = collate_plate(tmp_path, "BATCH1", "P1", backend=kinds, single_cells=formats)  # type: ignore[arg-type]
    assert result.status == "done" and result.report is not None
    out = tmp_path / "backend/BATCH1/P1"
    names = {"parquet": "P1_single_cells.parquet", "anndata": "P1_single_cells.h5ad"}
    report, trusted = trusted_outputs(tmp_path, "BATCH1", "P1")
    assert {names[f] for f in formats} <= set(trusted)  # generation ids match the report
    assert report is not None and report["backend"] == sorted(kinds)  # the joined table is not a backend table
    section = report["single_cells"]
    assert section["outputs"] == {f: names[f] for f in formats}
    backend = out / ("P1.sqlite" if "sqlite" in kinds else "P1_Image.parquet")
    after = write_single_cells(backend, prefix=tmp_path / "after" / "P1", formats=["parquet"])
    expected = pd.read_parquet(after.outputs["parquet"])
    assert section["rows_in"] == after.rows_in and section["cells_out"] == after.cells_out == len(expected)
    assert section["unlinked"] == {}
    if "parquet" in formats:
        pd.testing.assert_frame_equal(pd.read_parquet(out / names["parquet"]), expected)  # row for row
    if "anndata" in formats:
        import anndata

        adata = anndata.read_h5ad(out / names["anndata"])
        feats = [c for c in expected.columns if not c.startswith("Metadata_")]
        assert list(adata.var_names) == feats
        np.testing.assert_allclose(adata.X, expected[feats].to_numpy(np.float32), rtol=1e-6)
        assert adata.obs["Metadata_Well"].tolist() == expected["Metadata_Well"].tolist()
    if "sqlite" in kinds:
        ref = pycytominer_merge(backend, ["Metadata_Plate", "Metadata_Well"], ["TableNumber", "ImageNumber", "Metadata_Site"])
        assert_same_cells(expected, ref)
    again = collate_plate(tmp_path, "BATCH1", "P1", backend=kinds, single_cells=formats)  # type: ignore[arg-type]
    assert again.status == "skipped"
    collate_plate(tmp_path, "BATCH1", "P1", backend=kinds)  # type: ignore[arg-type]
    assert not [p.name for p in out.iterdir() if "single_cells" in p.name]  # not asked now: stale, removed


@pytest.mark.parametrize("compartment", ["Nuclei", "Cells"])
def test_collate_single_cells_names_unlinked_objects(tmp_path: Path, compartment: str) -> None:
    """A cell whose linked object is missing from the CSV is counted and named, never dropped silently."""
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=2, cells=6, features=4)
    site = sorted((tmp_path / "analysis/BATCH1/P1/analysis").iterdir())[1]
    table = pd.read_csv(site / f"{compartment}.csv")
    gone = table.iloc[2]
    table.drop(index=2).to_csv(site / f"{compartment}.csv", index=False)
    result = collate_plate(tmp_path, "BATCH1", "P1", single_cells=("parquet",), count_check="off")
    assert result.report is not None
    section = result.report["single_cells"]
    total = sum(r["rows"].get("Cytoplasm", 0) for r in result.report["sites"])
    assert section["rows_in"]["Cytoplasm"] == total and section["cells_out"] == total - 1
    other = ({"Cells", "Nuclei"} - {compartment}).pop()  # its object of that cell is now linked by no cell
    assert section["unlinked"] == {"Cytoplasm": 1, other: 1}
    named = {o["compartment"]: o for o in section["unlinked_objects"]}
    assert set(named) == {"Cytoplasm", other} and named["Cytoplasm"]["ImageNumber"] == int(gone["ImageNumber"])
    assert compartment in named["Cytoplasm"]["reason"]
    cells = pd.read_parquet(tmp_path / "backend/BATCH1/P1/P1_single_cells.parquet")
    assert len(cells) == total - 1


def test_collate_single_cells_refusals(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    synth(tmp_path, plates=["P1"], wells=96, well_subset=1, sites=1, cells=3, features=3)
    with pytest.raises(InputError, match="choose parquet and/or anndata"):
        collate_plate(tmp_path, "BATCH1", "P1", single_cells=("excel",))
    with pytest.raises(InputError, match="aggregate-only"):
        collate_plate(tmp_path, "BATCH1", "P1", single_cells=("parquet",), aggregate_only=True)
    assert main(["collate", str(tmp_path), "BATCH1", "P1", "--single-cell-format", "anndata", "-q"]) == 1
    assert main(["collate", str(tmp_path), "BATCH1", "P1", "--single-cells", "--single-cell-format", "anndata", "-q"]) == 0
    assert (tmp_path / "backend/BATCH1/P1/P1_single_cells.h5ad").is_file()


# ---------------------------------------------------------------- recipe outputs in Parquet / AnnData


def _recipe(ws: Path, *, extra: str = "", fmt: str = "csv") -> Path:
    from cytoprofile.config import config_template

    text = config_template(workspace=str(ws), batch="B1", plates=["P1"]).replace('float_format: "%.5g"', "float_format: null")
    text = text.replace("  output_format: csv ", f"  output_format: {fmt} ").replace("    - Intensity\n", "")
    text = text.replace("  exclude_outlier_cells: false ", f"  exclude_outlier_cells: {extra or 'false'} ")
    path = ws / f"config_{fmt}_{len(extra)}.yml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def recipe_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("formats")
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=24, sites=2, cells=10, features=16, seed=5)
    assert collate_plate(ws, "B1", "P1").status == "done"
    return ws


@pytest.mark.parametrize(("fmt", "suffix"), [("parquet", ".parquet"), ("anndata", ".h5ad")])
def test_recipe_outputs_in_parquet_and_anndata_equal_csv(recipe_ws: Path, tmp_path: Path, fmt: str, suffix: str) -> None:
    from cytoprofile.io import load_profiles
    from cytoprofile.pipeline import run

    csv_root, other_root = tmp_path / "csv", tmp_path / fmt
    run(_recipe(recipe_ws), root=csv_root)
    result = run(_recipe(recipe_ws, fmt=fmt), root=other_root)
    csvs = sorted(p.relative_to(csv_root) for p in (csv_root / "profiles").rglob("*.csv.gz"))
    assert len(csvs) >= 5
    written = sorted(p.relative_to(other_root) for p in (other_root / "profiles").rglob(f"*{suffix}"))
    assert written == [p.with_name(p.name.replace(".csv.gz", suffix)) for p in csvs]
    assert not list((other_root / "profiles").rglob("*.csv.gz"))
    for rel, other in zip(csvs, written):
        a, b = load_profiles(csv_root / rel), load_profiles(other_root / other)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), rel
        feats = [c for c in a.columns if not c.startswith("Metadata_")]
        np.testing.assert_allclose(b[feats].to_numpy(float), a[feats].to_numpy(float), rtol=1e-12, equal_nan=True)
        assert b["Metadata_Well"].astype(str).tolist() == a["Metadata_Well"].astype(str).tolist()
        assert (other_root / f"{other}.provenance.json").is_file()
    again = run(_recipe(recipe_ws, fmt=fmt), root=other_root)  # current outputs in that format are found
    assert not [r for r in again.ran if not r.startswith("quality_control")] and result.ran


def test_recipe_reads_a_hand_placed_table_in_any_format_but_not_two(recipe_ws: Path, tmp_path: Path) -> None:
    from cytoprofile.errors import ConfigError
    from cytoprofile.io import write_table
    from cytoprofile.pipeline import existing_output

    base = tmp_path / "P1.csv.gz"
    assert existing_output(str(base)) == str(base)  # nothing there: the asked name
    write_table(pd.DataFrame({"Metadata_Well": ["A01"], "Cells_x": [1.0]}), tmp_path / "P1.parquet")
    assert existing_output(str(base)) == str(tmp_path / "P1.parquet")
    write_table(pd.DataFrame({"Metadata_Well": ["A01"], "Cells_x": [1.0]}), tmp_path / "P1.csv")
    with pytest.raises(ConfigError, match="P1.csv, P1.parquet"):
        existing_output(str(base))


def test_recipe_aggregate_excludes_outlier_cells(recipe_ws: Path, tmp_path: Path) -> None:
    from cytoprofile.config import load_config
    from cytoprofile.errors import ConfigError
    from cytoprofile.io import read_table
    from cytoprofile.pipeline import run

    run(_recipe(recipe_ws, extra="[elongated_nuclei, small_and_low_formfactor_nuclei]"), root=tmp_path / "out")
    ours = read_table(tmp_path / "out/profiles/B1/P1/P1.csv.gz")
    side = json.loads((tmp_path / "out/profiles/B1/P1/P1.csv.gz.provenance.json").read_text())
    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=24, sites=2, cells=10, features=16, seed=5)
    direct = collate_plate(ws, "B1", "P1", profile_format="parquet",
                           exclude_outlier_cells=["elongated_nuclei", "small_and_low_formfactor_nuclei"])
    assert direct.report is not None
    expected = pd.read_parquet(direct.outputs["profiles"])
    expected = expected[[c for c in expected.columns if not c.startswith("Image_")]]
    assert side["cell_qc"]["excluded"] == direct.report["cell_qc"]["excluded"] > 0
    assert side["cell_qc"]["per_well"] == direct.report["cell_qc"]["per_well"]
    feats = [c for c in expected.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(ours[feats].to_numpy(float), expected[feats].to_numpy(float), rtol=1e-12)
    np.testing.assert_array_equal(ours["Metadata_Object_Count"], expected["Metadata_Object_Count"])
    bad = _recipe(recipe_ws).read_text().replace("  outlier_thresholds: null ", "  outlier_thresholds: sets.yml ")
    (tmp_path / "bad.yml").write_text(bad)
    with pytest.raises(ConfigError, match="outlier_thresholds has no effect"):
        load_config(tmp_path / "bad.yml")


@pytest.mark.parametrize(("kinds", "via_cli"), [(("sqlite",), False), (("parquet",), True)])
def test_collate_single_cells_with_another_hub(tmp_path: Path, kinds: tuple[str, ...], via_cli: bool) -> None:
    """``collate --single-cells --hub Cells`` joins Nuclei through Cells_Parent_Nuclei, as ``single-cells`` does."""
    from cytoprofile.cli import main

    synth(tmp_path, plates=["P1"], wells=96, well_subset=3, sites=2, cells=8, features=5, seed=3)
    pair = ("Cells", "Nuclei")
    if via_cli:
        args = ["collate", str(tmp_path), "BATCH1", "P1", "--single-cells", "--hub", "Cells", "-q"]
        args += [a for c in pair for a in ("--compartments", c)] + [a for k in kinds for a in ("--backend", k)]
        assert main(args) == 0
    else:
        result = collate_plate(tmp_path, "BATCH1", "P1", backend=kinds, compartments=pair,  # type: ignore[arg-type]
                               single_cells=("parquet",), hub="Cells")
        assert result.status == "done"
    out = tmp_path / "backend/BATCH1/P1"
    report = json.loads((out / "P1.report.json").read_text())
    assert report["options"]["hub"] == "Cells"
    assert set(report["single_cells"]["rows_in"]) == set(pair) and report["single_cells"]["unlinked"] == {}
    got = pd.read_parquet(out / "P1_single_cells.parquet")
    assert "Metadata_ObjectNumber_cells" in got.columns and "Metadata_Cells_Parent_Nuclei" in got.columns
    backend = out / ("P1.sqlite" if "sqlite" in kinds else "P1_Image.parquet")
    expected = single_cells(backend, compartments=list(pair), hub="Cells").to_pandas()
    pd.testing.assert_frame_equal(got, expected)
    assert len(got) == sum(r["rows"]["Cells"] for r in report["sites"])


def test_collate_hub_needs_joined_cells(tmp_path: Path) -> None:
    from cytoprofile.cli import main

    synth(tmp_path, plates=["P1"], wells=96, well_subset=1, sites=1, cells=3, features=3)
    with pytest.raises(InputError, match="--hub Cells joins cells"):
        collate_plate(tmp_path, "BATCH1", "P1", hub="Cells")
    assert main(["collate", str(tmp_path), "BATCH1", "P1", "--hub", "Cells", "-q"]) == 1


def test_sqlite_text_values_read_as_missing_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Old backends stored some values as text: that one is read as missing (named), every other value exactly."""
    backend = _plate(tmp_path, wells=1, sites=2, cells=5, features=4)
    expected = single_cells(backend).to_pandas()
    conn = sqlite3.connect(backend)
    feature = next(r[1] for r in conn.execute("PRAGMA table_info(Nuclei)") if r[1].startswith("Nuclei_") and "Parent" not in r[1])
    first = conn.execute("SELECT TableNumber, ImageNumber, ObjectNumber FROM Nuclei LIMIT 1").fetchone()
    conn.execute(f'UPDATE Nuclei SET "{feature}" = \'n/a\' WHERE TableNumber = ? AND ImageNumber = ? AND ObjectNumber = ?', first)
    conn.commit()
    assert conn.execute(f'SELECT count(*) FROM Nuclei WHERE typeof("{feature}") = \'text\'').fetchone()[0] == 1
    conn.close()
    with caplog.at_level("WARNING", logger="cytoprofile.single_cells"):
        got = single_cells(backend).to_pandas()
    assert "non-numeric values in " + feature in caplog.text
    hit = ((got["Metadata_ImageNumber"] == first[1]) & (got["Metadata_ObjectNumber"] == first[2])).to_numpy()
    assert hit.sum() == 1 and np.isnan(got.loc[hit, feature]).all()
    np.testing.assert_array_equal(got.loc[~hit, feature].to_numpy(), expected.loc[~hit, feature].to_numpy())
