"""The layout answers "where is X" for the workspace, the recipe and quality control, locally and on a URL."""

from __future__ import annotations

import os

import pytest

from cytoprofile import workspace
from cytoprofile.layout import (
    Layout,
    QualityControlLayout,
    Workspace,
    backend_files_in,
    is_parquet_table,
    parquet_tables_label,
    profiles_name,
    profiles_names,
    relative_to,
    report_name,
    single_cell_name,
    single_cell_names,
    sqlite_name,
    staging_name,
)

ROOTS = ["/data/ws", "s3://bucket/project/ws"]


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}"


@pytest.mark.parametrize("root", ROOTS)
def test_workspace_paths(root: str) -> None:
    ws = Workspace(root)
    b, p = "B1", "P1"
    expected = {
        ws.analysis(b, p): "analysis/B1/P1/analysis",
        ws.analysis_plate(b, p): "analysis/B1/P1",
        ws.folder("analysis"): "analysis",
        ws.folder("analysis", b): "analysis/B1",
        ws.backend_root(): "backend",
        ws.folder("backend", b): "backend/B1",
        ws.backend(b, p): "backend/B1/P1",
        ws.sqlite(b, p): "backend/B1/P1/P1.sqlite",
        ws.parquet_prefix(b, p): "backend/B1/P1/P1",
        ws.profiles(b, p): "backend/B1/P1/P1.csv",
        ws.profiles(b, p, profile_format="parquet"): "backend/B1/P1/P1.parquet",
        ws.report(b, p): "backend/B1/P1/P1.report.json",
        ws.platemaps(b): "metadata/platemaps/B1",
        ws.barcode_platemap(b): "metadata/platemaps/B1/barcode_platemap.csv",
        ws.platemap(b, "M1"): "metadata/platemaps/B1/platemap/M1.txt",
        ws.external_metadata("external_metadata", "x.tsv"): "metadata/external_metadata/x.tsv",
        ws.load_data(b): "load_data_csv/B1",
    }
    for path, rel in expected.items():
        assert path == _join(root, rel)
        assert ws.relative(path) == rel  # round trip


def test_relative_parts_match_the_paths() -> None:
    """The staging prefixes are the same paths, relative: a scratch copy has the workspace's layout."""
    ws = Workspace("s3://bucket/ws")
    assert ws.relative(ws.analysis("B", "P")) == Workspace.analysis_rel("B", "P")
    assert ws.relative(ws.backend("B", "P")) == Workspace.backend_rel("B", "P")
    assert ws.relative(ws.report("B", "P")) == Workspace.report_rel("B", "P")
    assert ws.relative(ws.platemaps("B")) == Workspace.platemap_rel("B")
    assert ws.relative(ws.load_data("B")) == Workspace.load_data_rel("B")
    assert ws.relative(ws.external_metadata("moa", "f")) == os.path.join(Workspace.metadata_rel("moa"), "f")


def test_lock_is_beside_the_plate_folders(tmp_path: os.PathLike[str]) -> None:
    ws = Workspace(str(tmp_path))
    assert ws.lock("B", "P") == os.path.join(str(tmp_path), "backend", "B", ".P.lock")
    with workspace.plate_lock(str(tmp_path), "B", "P") as held:
        assert held == ws.lock("B", "P")


@pytest.mark.parametrize("root", ROOTS)
def test_backend_files_agree(root: str) -> None:
    ws = Workspace(root)
    files = ws.backend_files("B", "P", profile_format="csv.gz")
    assert files == backend_files_in(ws.backend("B", "P"), "P", profile_format="csv.gz")
    assert files["profiles"].endswith("/backend/B/P/P.csv.gz")
    assert files["report"].endswith("/" + report_name("P"))


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize(("output_format", "compression", "suffix"),
                         [("csv", "gzip", ".csv.gz"), ("csv", None, ".csv"), ("parquet", "gzip", ".parquet"),
                          ("anndata", None, ".h5ad")])
def test_recipe_paths(root: str, output_format: str, compression: str | None, suffix: str) -> None:
    layout = Layout(root=root, workspace=root, output_format=output_format, compression=compression)
    assert layout.suffix == suffix
    steps = layout.step_outputs("B", "P")
    assert steps == {
        "aggregate": _join(root, f"profiles/B/P/P{suffix}"),
        "annotate": _join(root, f"profiles/B/P/P_augmented{suffix}"),
        "normalize": _join(root, f"profiles/B/P/P_normalized{suffix}"),
        "normalize_negcon": _join(root, f"profiles/B/P/P_normalized_negcon{suffix}"),
    }
    assert layout.gct_file("B", "_x", ".gct") == _join(root, "gct/B/B_x.gct")
    assert layout.relative(layout.gct_file("B", "_x", ".gct")).startswith(Layout.gct_rel("B") + "/")
    assert layout.processing_file(["var", "mad"]) == _join(root, "profiles/processing/profiles_var_mad.parquet")
    assert layout.quality_control() == _join(root, "quality_control")
    assert layout.profiles_root() == _join(root, "profiles")
    assert layout.relative(layout.plate_file("B", "P", "")).startswith(layout.profiles_rel("B", "P") + "/")
    assert layout.handbook == Workspace(root)


def test_recipe_layout_at_a_scratch_copy(tmp_path: os.PathLike[str]) -> None:
    remote = Layout(root="s3://b/ws", workspace="s3://b/ws", output_dir="out", compression=None,
                    output_format="parquet")
    local = remote.at(str(tmp_path))
    assert (local.root, local.workspace, local.output_dir, local.suffix) == (str(tmp_path), str(tmp_path), "out",
                                                                             ".parquet")
    for path_remote, path_local in zip(remote.step_outputs("B", "P").values(), local.step_outputs("B", "P").values()):
        assert remote.relative(path_remote) == local.relative(path_local)


def test_recipe_finds_metadata_in_the_root_first(tmp_path: os.PathLike[str]) -> None:
    root, ws = os.path.join(str(tmp_path), "recipe"), os.path.join(str(tmp_path), "ws")
    os.makedirs(os.path.join(ws, "metadata", "platemaps", "B"))
    os.makedirs(os.path.join(ws, "load_data_csv", "B"))
    layout = Layout(root=root, workspace=ws)
    assert layout.meta_root("B") == ws
    assert layout.load_data("B") == os.path.join(ws, "load_data_csv", "B")
    assert layout.load_data_root("B") == os.path.join(ws, "load_data_csv")
    os.makedirs(os.path.join(root, "metadata", "platemaps", "B"))
    os.makedirs(os.path.join(root, "load_data_csv", "B"))
    assert layout.meta_root("B") == root
    assert layout.load_data("B") == os.path.join(root, "load_data_csv", "B")
    assert layout.load_data_root("B") == os.path.join(root, "load_data_csv")


@pytest.mark.parametrize("root", ROOTS)
def test_quality_control_paths(root: str) -> None:
    qc = QualityControlLayout(root)
    assert qc.outputs() == _join(root, "quality_control")
    assert qc.summary() == _join(root, "quality_control/summary/summary.tsv")
    assert qc.map_file("B", "activity") == _join(root, "quality_control/" + qc.map_name("B", "activity"))
    assert qc.heatmap("B", "P", "correlation") == _join(root, "quality_control/heatmap/B/P/P_correlation.png")
    assert qc.html_report("B") == _join(root, "quality_control/report/B.html")
    assert qc.profiles("B", "P") == _join(root, "profiles/B/P")
    assert qc.report_json("B", "P") == _join(root, "backend/B/P/P.report.json")
    assert qc.load_data("B", "P") == _join(root, "load_data_csv/B/P")
    assert relative_to(qc.summary(), root) == "quality_control/summary/summary.tsv"


def test_plate_file_names() -> None:
    """Every name of a plate's backend outputs comes from one place, and matches the paths above."""
    assert sqlite_name("P1") == "P1.sqlite"
    assert [profiles_name("P1", profile_format=f) for f in ("csv", "csv.gz", "parquet")] == profiles_names("P1")
    assert profiles_names("P1") == ["P1.csv", "P1.csv.gz", "P1.parquet"]
    assert single_cell_name("P1", "parquet") == "P1_single_cells.parquet"
    assert single_cell_name("P1", "anndata") == "P1_single_cells.h5ad"
    assert single_cell_names("P1") == {"P1_single_cells.parquet", "P1_single_cells.h5ad"}
    assert is_parquet_table("P1", "P1_Cells.parquet") and not is_parquet_table("P1", "P2_Cells.parquet")
    assert not is_parquet_table("P1", "P1.parquet")
    assert parquet_tables_label("P1") == "P1_*.parquet"
    assert staging_name("P1", "0123456789abcdef") == ".P1.01234567.tmp"
    files = Workspace("/ws").backend_files("B1", "P1", profile_format="csv.gz")
    assert os.path.basename(files["sqlite"]) == sqlite_name("P1")
    assert os.path.basename(files["profiles"]) == profiles_name("P1", profile_format="csv.gz")


def test_find_backend_prefers_parquet_and_names_what_is_missing(tmp_path: os.PathLike[str]) -> None:
    from cytoprofile.errors import CytoprofileError
    from cytoprofile.layout import parquet_table_path

    ws = Workspace(str(tmp_path))
    with pytest.raises(CytoprofileError, match=r"P: no backend in .*backend/B/P; run `cytoprofile collate` first"):
        ws.find_backend("B", "P")
    os.makedirs(ws.backend("B", "P"))
    open(ws.sqlite("B", "P"), "w").close()
    assert ws.find_backend("B", "P") == ws.sqlite("B", "P")
    with pytest.raises(CytoprofileError, match="P: no parquet backend at .*P_Image.parquet"):
        ws.find_backend("B", "P", "parquet")
    image = parquet_table_path(ws.parquet_prefix("B", "P"), "Image")
    open(image, "w").close()
    assert ws.find_backend("B", "P") == image == ws.find_backend("B", "P", "parquet")
    assert ws.find_backend("B", "P", "sqlite") == ws.sqlite("B", "P")
    with pytest.raises(CytoprofileError, match="--backend csv: choose sqlite or parquet"):
        ws.find_backend("B", "P", "csv")


def test_a_plate_folder_needs_its_batch() -> None:
    with pytest.raises(ValueError, match="without its batch"):
        Workspace("/ws").folder("backend", plate="P")


def test_staged_copy_names_the_url(tmp_path: os.PathLike[str]) -> None:
    """A staged copy maps its files to the workspace URL, and errors raised inside name the URL, not scratch."""
    from cytoprofile.errors import InputError

    remote = "s3://bucket/project/ws"
    with workspace.staged(remote, tmp_dir=str(tmp_path), prefix="t") as copy:
        local = copy.local
        assert os.path.isdir(local) and os.path.dirname(local) == str(tmp_path)
        assert copy.url(os.path.join(local, "backend", "B", "P", "P.csv")) == f"{remote}/backend/B/P/P.csv"
        with pytest.raises(InputError) as caught, copy.named_at_url():
            raise InputError(f"{local}/backend/B/P/P.csv: no rows; and {local}")
        assert str(caught.value) == f"{remote}/backend/B/P/P.csv: no rows; and {remote}"
        assert isinstance(caught.value.__cause__, InputError)
    assert not os.path.exists(local)
