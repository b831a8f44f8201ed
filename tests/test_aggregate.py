"""Per-well aggregation: backends of every generation, strata, hand-computed values."""

from __future__ import annotations

import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.aggregate import WellAggregator, aggregate
from cytoprofile.collate import collate_plate
from cytoprofile.synth import synth

from .reference import pycytominer_merge


def test_legacy_image_prefixed_backend_matches_reference_merge(shared_data: Path, tmp_path: Path) -> None:
    from pycytominer import aggregate as reference_aggregate

    backend = shared_data / "legacy-backends/test_SQ00014613.sqlite"
    ours = aggregate(backend, image_features=False)
    assert ours[["Metadata_Plate", "Metadata_Well"]].values.tolist() == [["SQ00014613", "A01"]]
    assert ours.loc[0, "Metadata_Site_Count"] == 2
    merged = pycytominer_merge(backend, ["Image_Metadata_Plate", "Image_Metadata_Well"], ["TableNumber", "ImageNumber"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_aggregate(merged, strata=["Image_Metadata_Plate", "Image_Metadata_Well"], features="infer")
    features = [c for c in ref.columns if not c.startswith("Image_Metadata")]
    assert set(features) <= set(ours.columns)
    np.testing.assert_allclose(ours[features].to_numpy(float), ref[features].to_numpy(float), rtol=1e-9, equal_nan=True)
    # the reference's own merged output from the same backend agrees too
    stored = pd.read_csv(shared_data / "legacy-backends/test_SQ00014613.csv.gz")
    assert len(stored) == int(ours.loc[0, "Metadata_Object_Count"])


def test_legacy_backend_with_image_features_and_text_keys(shared_data: Path) -> None:
    ours = aggregate(shared_data / "legacy-backends/test_SQ00014613.sqlite")
    assert "Metadata_Count_Cells" in ours.columns and any(c.startswith("Image_Granularity") for c in ours.columns)
    small = aggregate(shared_data / "legacy-backends/test_BR00126114.sqlite", compartments=["Nuclei"])
    assert small.loc[0, "Metadata_Object_Count"] == 20
    conn = sqlite3.connect(shared_data / "legacy-backends/test_BR00126114.sqlite")
    expected = conn.execute("SELECT Nuclei_Location_Center_X FROM Nuclei").fetchall()
    conn.close()
    assert small.loc[0, "Nuclei_Location_Center_X"] == pytest.approx(float(np.median([float(r[0]) for r in expected])))


def test_hand_computed_median_mean_and_counts() -> None:
    agg = WellAggregator(strata=["Metadata_Plate", "Metadata_Well"], compartments={"Cells": ["Cells_a", "Cells_b"]},
                         image_columns=["Count_Cells", "Granularity_1_DNA"], operation="median")
    cells = np.array([[1.0, np.nan], [2.0, 4.0], [10.0, np.nan]])
    agg.add(("P", "A01"), n_images=2, image_counts=np.array([[2.0], [1.0]]), image_values=np.array([[1.0], [3.0]]),
            objects={"Cells": cells})
    agg.add(("P", "A02"), n_images=1, image_counts=np.array([[0.0]]), image_values=np.array([[5.0]]),
            objects={"Cells": np.empty((0, 2))})
    df = agg.result()
    assert list(df.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Site_Count", "Metadata_Count_Cells",
                                "Metadata_Object_Count", "Image_Granularity_1_DNA", "Cells_a", "Cells_b"]
    assert df.loc[0, ["Metadata_Site_Count", "Metadata_Count_Cells", "Metadata_Object_Count"]].tolist() == [2, 3.0, 3]
    assert df.loc[0, "Image_Granularity_1_DNA"] == 2.0 and df.loc[0, "Cells_a"] == 2.0 and df.loc[0, "Cells_b"] == 4.0
    # a well with zero cells is a row with 0 objects and NaN features
    assert df.loc[1, "Metadata_Object_Count"] == 0 and np.isnan(df.loc[1, "Cells_a"])
    mean = WellAggregator(strata=["Metadata_Plate", "Metadata_Well"], compartments={"Cells": ["Cells_a", "Cells_b"]},
                          image_columns=[], operation="mean")
    mean.add(("P", "A01"), n_images=1, image_counts=np.empty((1, 0)), image_values=np.empty((1, 0)), objects={"Cells": cells})
    assert mean.result().loc[0, "Cells_a"] == pytest.approx(13 / 3)


def test_site_strata_give_one_profile_per_site_in_numeric_order(tmp_path: Path) -> None:
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=11, cells=4, features=4)
    result = collate_plate(tmp_path, "BATCH1", "P1", strata=("Metadata_Plate", "Metadata_Well", "Metadata_Site"))
    df = io.read_table(result.outputs["profiles"])
    assert len(df) == 22 and "Metadata_Site_Count" not in df.columns
    assert df["Metadata_Site"].tolist()[:11] == list(range(1, 12))


def test_fields_pick_sites(tmp_path: Path) -> None:
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=3, cells=4, features=4)
    result = collate_plate(tmp_path, "BATCH1", "P1")
    df = aggregate(result.outputs["sqlite"], sites=[1, 2])
    assert df["Metadata_Site_Count"].tolist() == [2, 2]
    # fields that match no site (recipe `aggregate.fields: [0]`) used to give a table of no wells
    from cytoprofile.errors import InputError

    with pytest.raises(InputError, match="none of the sites 0, 9 is in the Image table"):
        aggregate(result.outputs["sqlite"], sites=[0, 9])


def test_copied_backend_reads_alike(tmp_path: Path) -> None:
    synth(tmp_path / "ws", plates=["P1"], wells=96, well_subset=2, sites=2, cells=4, features=4)
    result = collate_plate(tmp_path / "ws", "BATCH1", "P1", backend=("sqlite", "parquet"))
    copy = tmp_path / "copy.sqlite"
    shutil.copy(result.outputs["sqlite"], copy)
    a = aggregate(copy)
    b = aggregate(Path(result.outputs["parquet"]))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("damage", ["sqlite page zeroed", "parquet text"])
def test_a_damaged_backend_is_one_line_naming_it(tmp_path: Path, damage: str) -> None:
    """A malformed SQLite page or a Parquet table that is not Parquet: exit 3 with a traceback before, now one
    line naming the file and the fix."""
    import shutil

    from cytoprofile.collate import collate_plate
    from cytoprofile.errors import InputError
    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    copy = tmp_path / "copy"
    shutil.copytree(ws / "backend/BATCH1/P1", copy)
    if damage.startswith("sqlite"):
        source = copy / "P1.sqlite"
        page = 65536  # the backend's page size: every page past the first two holds table rows
        assert source.stat().st_size > 4 * page
        with open(source, "r+b") as fh:
            fh.seek(3 * page)
            fh.write(b"\0" * page)
        broken = source
    else:
        source = copy / "P1_Image.parquet"
        broken = copy / "P1_Cells.parquet"
        broken.write_text("not parquet")
    with pytest.raises(InputError, match="the backend cannot be read") as info:
        aggregate(source)
    assert str(broken) in str(info.value) and "--overwrite" in str(info.value)


def test_an_unreadable_backend_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the disk refuses (permission, I/O error) while the backend is read: one line naming it (CI runs as
    root, so the refusal is injected where the reader opens the file)."""
    import errno

    import pyarrow.parquet as pq

    from cytoprofile.collate import collate_plate
    from cytoprofile.errors import InputError
    from cytoprofile.synth import synth

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=1, sites=1, cells=5, features=4)
    collate_plate(ws, "BATCH1", "P1", backend=("parquet",))

    def refuse(path: object, *_: object, **__: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(pq, "read_schema", refuse)
    with pytest.raises(InputError, match="cannot be read \\(Permission denied\\); check the file's permissions"):
        aggregate(ws / "backend/BATCH1/P1/P1_Image.parquet")


@pytest.mark.parametrize("kind", ["sqlite", "parquet"])
def test_a_backend_without_images_is_refused_not_a_profile_of_no_wells(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A backend whose tables hold no rows (another tool's, or emptied): ``aggregate`` wrote a header-only table
    of 0 wells, exit 0. It is one line naming the backend, exit 1, and no output file."""
    import pyarrow.parquet as pq

    from cytoprofile.cli import main
    from cytoprofile.errors import InputError

    synth(tmp_path / "ws", plates=["P1"], wells=96, well_subset=2, sites=1, cells=4, features=3)
    result = collate_plate(tmp_path / "ws", "BATCH1", "P1", backend=(kind,))
    source = Path(result.outputs[kind])
    if kind == "sqlite":
        with sqlite3.connect(source) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                conn.execute(f'DELETE FROM "{table}"')
    else:
        for path in source.parent.glob("*.parquet"):
            pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(InputError, match="the Image table has no rows"):
        aggregate(source)
    out = tmp_path / "out.csv"
    capsys.readouterr()  # what collate logged above
    assert main(["aggregate", str(source), str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(source) in err and "no rows" in err, err
    assert not out.exists()
