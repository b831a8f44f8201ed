"""Table I/O: deterministic gzip, atomic writes, formats, GCT layout."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cytoprofile import io
from cytoprofile.errors import InputError


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"Metadata_Plate": ["P", "P"], "Metadata_Well": ["A01", "A02"],
                         "Cells_a": [1.234567891, np.nan], "Nuclei_b": [3.0, -4.5e-7]})


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    io.write_table(_frame(), path)
    pd.testing.assert_frame_equal(io.read_table(path), _frame())


def test_gzip_is_byte_identical_across_runs_and_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv.gz", tmp_path / "sub" / "b.csv.gz"
    io.write_table(_frame(), a, float_format="%.5g")
    io.write_table(_frame(), b, float_format="%.5g")
    assert a.read_bytes() == b.read_bytes()
    row = gzip.decompress(a.read_bytes()).decode().splitlines()[1].split(",")
    assert row[:2] == ["P", "A01"] and [float(v) for v in row[2:]] == [1.2346, 3.0]


@pytest.mark.parametrize("float_format", [None, "%.5g", "%.3g", "%.4f"])
def test_fast_writer_reads_back_like_printf(tmp_path: Path, float_format: str | None) -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"Metadata_Well": [f"A{i:02d}" for i in range(50)], "Metadata_Count": np.arange(50),
                       "Cells_x": rng.normal(size=50) * 10.0 ** rng.integers(-8, 8, 50),
                       "Cells_y": np.where(rng.random(50) < 0.2, np.nan, rng.normal(size=50))})
    io.write_table(df, tmp_path / "fast.csv", float_format=float_format)
    slow = tmp_path / "printf.csv"
    df.to_csv(slow, index=False, float_format=float_format)
    pd.testing.assert_frame_equal(io.read_table(tmp_path / "fast.csv"), pd.read_csv(slow), check_exact=True)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        Path(tmp).write_text("partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_csv2gz_keeps_values_at_5_significant_digits(tmp_path: Path) -> None:
    src = tmp_path / "PLATE.csv"
    io.write_table(_frame(), src)
    out = io.csv2gz(src)
    assert out.endswith("PLATE.csv.gz")
    back = io.read_table(out)
    assert back.loc[0, "Cells_a"] == pytest.approx(1.2346)


def test_unreadable_tables_are_input_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv"):
        io.read_table(tmp_path / "empty.csv")
    with pytest.raises(InputError, match="missing.csv"):
        io.read_table(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="unknown table format"):
        io.write_table(_frame(), tmp_path / "x.xlsx")


def test_gct_layout(tmp_path: Path) -> None:
    path = tmp_path / "x.gct"
    io.write_gct(_frame(), path, features=["Cells_a", "Nuclei_b"], meta_features=["Metadata_Plate", "Metadata_Well"])
    lines = path.read_text().splitlines()
    assert lines[0] == "#1.3"
    assert lines[1] == "2\t2\t1\t2"
    assert lines[2] == "id\tcp_feature_name\tSAMPLE_0\tSAMPLE_1"
    assert lines[3] == "Plate\tnan\tP\tP" and lines[4] == "Well\tnan\tA01\tA02"
    assert lines[5].split("\t")[:3] == ["Cells_a", "Cells_a", "1.234567891"] and lines[5].endswith("nan")


def test_gct_equals_reference_writer(tmp_path: Path) -> None:
    from pycytominer.cyto_utils import write_gct

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"Metadata_Plate": ["P1"] * 4, "Metadata_Well": ["A01", "A02", "B01", "B02"],
                       "Metadata_dose": [0.1, 1.0, 10.0, np.nan]})
    for name in ("Cells_AreaShape_Area", "Cytoplasm_Intensity_MeanIntensity_DNA", "Nuclei_Texture_Contrast_DNA_3_00_256"):
        df[name] = rng.normal(size=4)
    ours, ref = tmp_path / "ours.gct", tmp_path / "ref.gct"
    meta = [c for c in df.columns if c.startswith("Metadata_")]
    io.write_gct(df, ours, features=[c for c in df.columns if c not in meta], meta_features=meta)
    write_gct(df, output_file=str(ref))
    assert ours.read_text().splitlines() == ref.read_text().replace("\r\n", "\n").splitlines()


@pytest.mark.parametrize("damage", ["cut_row", "cut_gzip", "not_parquet", "folder"])
def test_damaged_tables_are_refused_with_the_file_named(tmp_path: Path, damage: str) -> None:
    if damage == "cut_row":
        path = tmp_path / "p.csv"
        io.write_table(_frame(), path)
        path.write_bytes(path.read_bytes()[:-12])  # the last row loses fields
    elif damage == "cut_gzip":
        path = tmp_path / "p.csv.gz"
        io.write_table(_frame(), path)
        path.write_bytes(path.read_bytes()[:-10])
    elif damage == "not_parquet":
        path = tmp_path / "p.parquet"
        path.write_text("hello")
    else:
        path = tmp_path / "p.csv"
        path.mkdir()
    with pytest.raises(InputError, match=str(path.name)):
        io.read_table(path)


@pytest.mark.parametrize(("exc", "says"), [
    (OSError(28, "No space left on device", "/x/out/P1.csv"), "no space left"),
    (OSError(30, "Read-only file system"), "read-only"),
    (OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"), "no space left"),
    (__import__("sqlite3").OperationalError("database or disk is full"), "no space left"),
    (__import__("sqlite3").OperationalError("attempt to write a readonly database"), "read-only"),
])
def test_output_errors_name_the_folder_and_the_fix(tmp_path: Path, exc: Exception, says: str) -> None:
    from cytoprofile.errors import OutputError

    with pytest.raises(OutputError) as info, io.output_errors(tmp_path):
        raise exc
    text = str(info.value)
    folder = "/x/out" if getattr(exc, "filename", None) else str(tmp_path)
    assert text.startswith(f"cannot write to {folder}: ") and says in text and "re-run" in text
    with pytest.raises(ValueError), io.output_errors(tmp_path):  # other errors pass through unchanged
        raise ValueError("not about the disk")


def test_leftovers_of_killed_runs_are_removed_and_nothing_else(tmp_path: Path) -> None:
    keep = [tmp_path / "P1.csv", tmp_path / "a/P1_normalized.csv.gz", tmp_path / "a/notes.tmp"]
    gone = [tmp_path / ".P1.csv.1a2b3c4d.tmp", tmp_path / "a/b/.x.gct.00ff00ff.tmp", tmp_path / ".P1.deadbeef.tmp/P1.sqlite"]
    for path in keep + gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    removed = io.remove_leftovers(tmp_path)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    assert not (tmp_path / ".P1.deadbeef.tmp").exists() and len(removed) == 3
    assert io.is_leftover("ws/backend/B/P/.P1.csv.1a2b3c4d.tmp") and not io.is_leftover("ws/notes.tmp")


def test_storage_timeouts_are_set_and_checked() -> None:
    from cytoprofile.errors import ConfigError

    options = io.storage_options(endpoint_url="http://127.0.0.1:9", connect_timeout=1, read_timeout=2, retries=0)
    assert options["config_kwargs"] == {"connect_timeout": 1, "read_timeout": 2,
                                        "retries": {"max_attempts": 0, "mode": "standard"}}
    assert io.storage_options()["config_kwargs"]["read_timeout"] == io.DEFAULT_READ_TIMEOUT == 15
    with pytest.raises(ConfigError, match="timeouts"):
        io.storage_options(read_timeout=0)
