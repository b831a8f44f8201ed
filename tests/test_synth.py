"""synth: the generated workspace has the handbook shape, counted by hand, and the same bytes for the same seed."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from cytoprofile.errors import ConfigError
from cytoprofile.synth import cellprofiler_column_name, feature_names, synth, well_names

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


def _rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("plates", "wells", "subset", "sites"),
    [(["P1"], 96, None, 1), (["P1", "P2"], 96, 5, 3), (["A", "B", "C"], 384, 7, 2)],
)
def test_csv_workspace_shape_matches_hand_counts(
    tmp_path: Path, plates: list[str], wells: int, subset: int | None, sites: int
) -> None:
    result = synth(tmp_path, batch="B1", plates=plates, wells=wells, well_subset=subset, sites=sites, cells=6,
                   features=5, treatments=4)
    used = subset or wells
    assert result.wells == well_names(wells)[:used] and result.sites == sites and result.plates == plates
    cells = 0
    for plate in plates:
        folder = tmp_path / "analysis" / "B1" / plate / "analysis"
        expected = {f"{plate}-{w}-{s}" for w in well_names(wells)[:used] for s in range(1, sites + 1)}
        assert {p.name for p in folder.iterdir()} == expected
        for site in folder.iterdir():
            assert sorted(p.name for p in site.iterdir()) == ["Cells.csv", "Cytoplasm.csv", "Image.csv", "Nuclei.csv"]
            (image,) = _rows(site / "Image.csv")
            plate_, well, number = site.name.rsplit("-", 2)
            assert (image["Metadata_Plate"], image["Metadata_Well"], image["Metadata_Site"]) == (plate_, well, number)
            n = len(_rows(site / "Cells.csv"))
            assert [len(_rows(site / f"{c}.csv")) for c in COMPARTMENTS] == [n, n, n]
            assert float(image["Count_Cells"]) == n
            header = (site / "Nuclei.csv").read_text().splitlines()[0].split(",")
            assert header[:2] == ["ImageNumber", "ObjectNumber"]
            assert set(feature_names("Nuclei", 5)) <= set(header)
            cells += n
        load = _rows(tmp_path / "load_data_csv" / "B1" / plate / "load_data.csv")
        assert len(load) == used * sites
    assert result.cells_written == cells
    assert result.files == 4 * len(plates) * used * sites
    meta = tmp_path / "metadata" / "platemaps" / "B1"
    barcodes = _rows(meta / "barcode_platemap.csv")
    maps = [f"PM-{i % 2 + 1:02d}" for i in range(len(plates))]
    assert [(r["Assay_Plate_Barcode"], r["Plate_Map_Name"]) for r in barcodes] == list(zip(plates, maps))
    for name in set(maps):
        platemap = _rows(meta / "platemap" / f"{name}.txt", delimiter="\t")
        assert [r["well_position"] for r in platemap] == well_names(wells)  # the whole plate, not the subset
        assert sum(r["control_type"] == "negcon" for r in platemap) == round(wells * 0.25)
        assert {r["broad_sample"] for r in platemap if r["control_type"] == "trt"} == {
            f"BRD-K{1000 + t:05d}-001-01-1" for t in range(4)
        }
    external = _rows(tmp_path / "metadata" / "external_metadata" / "external_metadata.tsv", delimiter="\t")
    assert len(external) == 4 + 1  # the treatments and DMSO
    assert sum(r["moa"] == "active" for r in external) == 2  # strong_fraction 0.5 of 4


def test_same_seed_same_bytes_other_seed_other_values(tmp_path: Path) -> None:
    options = dict(plates=["P1", "P2"], well_subset=3, sites=2, cells=5, features=6)
    synth(tmp_path / "a", seed=3, **options)  # type: ignore[arg-type]
    synth(tmp_path / "b", seed=3, **options)  # type: ignore[arg-type]
    synth(tmp_path / "c", seed=4, **options)  # type: ignore[arg-type]
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert any(a[k] != c[k] for k in a if k.endswith("Cells.csv"))


@pytest.mark.parametrize("layout", ["per_object_table", "per_object"])
@pytest.mark.parametrize("files", [1, 3])
def test_database_export_holds_every_site_and_cell(tmp_path: Path, layout: str, files: int) -> None:
    result = synth(tmp_path, batch="B1", plates=["P1"], well_subset=4, sites=2, cells=5, features=4,
                   export="database", export_files=files, export_layout=layout)
    plate = tmp_path / "analysis" / "B1" / "P1"
    assert sorted(p.name for p in plate.iterdir()) == [f"run{k}.sqlite" for k in range(1, files + 1)]
    images = cells = 0
    for path in sorted(plate.iterdir()):
        with sqlite3.connect(path) as conn:
            numbers = [r[0] for r in conn.execute("SELECT ImageNumber FROM MyExpt_Per_Image ORDER BY ImageNumber")]
            assert numbers == list(range(1, len(numbers) + 1))  # each run numbers its images from 1
            images += len(numbers)
            table = "MyExpt_Per_Cells" if layout == "per_object_table" else "MyExpt_Per_Object"
            cells += conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    assert images == 4 * 2
    assert cells == result.cells_written


def test_faults_are_planted_in_the_first_plate_only(tmp_path: Path) -> None:
    synth(tmp_path, batch="B1", plates=["P1", "P2"], well_subset=3, sites=2, cells=6, features=4, faults=True)
    first = tmp_path / "analysis" / "B1" / "P1" / "analysis"
    assert (first / "P1-A01-2" / "Nuclei.csv").read_bytes() == b""
    header, *rows = (first / "P1-A02-2" / "Cells.csv").read_text().splitlines()
    assert len(rows[0].split(",")) == len(header.split(",")) - 3  # the cut-off row
    assert len((first / "P1-A03-2" / "Image.csv").read_text().splitlines()) == 1  # header only
    second = tmp_path / "analysis" / "B1" / "P2" / "analysis"
    assert all((s / "Nuclei.csv").stat().st_size > 0 and len(_rows(s / "Image.csv")) == 1 for s in second.iterdir())


@pytest.mark.parametrize("options", [{"export": "parquet"}, {"export": "database", "faults": True}, {"wells": 100}])
def test_refused_options(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        synth(tmp_path, **options)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_well_names_follow_plate_geometry() -> None:
    assert well_names(96)[:3] == ["A01", "A02", "A03"] and well_names(96)[-1] == "H12"
    assert len(well_names(384)) == 384 and well_names(384)[-1] == "P24"
    assert len(well_names(1536)) == 1536 and well_names(1536)[-1] == "AF48"


def test_feature_names_are_unique_beyond_the_pool() -> None:
    assert feature_names("Cells", 3) == ["AreaShape_Area", "AreaShape_Compactness", "AreaShape_Eccentricity"]
    # the pool: 10 shape, 25 + 25 intensity, 65 granularity, 10 correlation, 420 texture, 60 radial names;
    # nuclei add 6 Manders correlations and 6 large-scale granularities
    for compartment, pool in (("Cells", 615), ("Nuclei", 627)):
        many = feature_names(compartment, 2000)
        assert len(many) == len(set(many)) == 2000
        assert not any(n.startswith("Texture_Extra_") for n in many[:pool])
        assert many[pool] == "Texture_Extra_00000_DNA_3_00_256"
        assert many[-1] == f"Texture_Extra_{2000 - pool - 1:05d}_DNA_3_00_256"


def test_column_names_shortened_as_cellprofiler_does() -> None:
    assert cellprofiler_column_name("Cells_AreaShape", max_length=20) == "Cells_AreaShape"
    # from the end back to the first underscore: lower-case vowels first (e, a, a)
    assert cellprofiler_column_name("Cells_AreaShape", max_length=12) == "Cells_AreShp"


@pytest.mark.parametrize(("option", "value"), [("cells", -5), ("sites", 0), ("well_subset", 0), ("features", 0),
                                               ("treatments", -1), ("export_files", 0), ("sites", 1.5)])
def test_a_count_out_of_range_is_refused_naming_the_flag(tmp_path: Path, option: str, value: float,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``synth --cells -5`` crashed (exit 3); ``--sites 0`` wrote a workspace without a site."""
    from cytoprofile.cli import main

    with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')}"):
        synth(tmp_path / "ws", **{option: value})  # type: ignore[arg-type]
    assert not (tmp_path / "ws").exists()
    if isinstance(value, int):
        assert main(["synth", str(tmp_path / "ws"), f"--{option.replace('_', '-')}", str(value)]) == 1
        assert f"--{option.replace('_', '-')}" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "said"), [({"export_layout": "foo"}, "--export-layout"),
                                               ({"export_layout": "per_object"}, "use it with --export database"),
                                               ({"export": "sql"}, "--export")])
def test_an_export_option_without_its_effect_is_refused(tmp_path: Path, options: dict[str, str], said: str) -> None:
    """``--export-layout`` of a CSV workspace was ignored (and ``foo`` accepted): every option has its effect or is refused."""
    with pytest.raises(ConfigError, match=said):
        synth(tmp_path / "ws", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "ws").exists()
