"""metadata: loading the handbook's plate maps and reporting every mistake in them at once."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cytoprofile.errors import InputError, MetadataError
from cytoprofile.metadata import (
    load_barcode_platemap,
    load_external_metadata,
    load_platemap,
    platemap_for_plate,
    platemap_name_for_plate,
    validate_metadata,
)
from cytoprofile.vocabulary import well_name_problem

BATCH = "2016_04_01_a549_48hr_batch1"
WELLS = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]


def platemap_text(name: str, wells: list[str] | None = None, sep: str = "\t") -> str:
    lines = [sep.join(["plate_map_name", "well_position", "broad_sample", "mg_per_ml"])]
    for i, well in enumerate(wells if wells is not None else WELLS):
        sample = "" if i % 6 == 0 else f"BRD-K{i:08d}-001-01-1"
        lines.append(sep.join([name, well, sample, f"{i / 10:.2f}"]))
    return "\n".join(lines) + "\n"


def make_workspace(root: Path, plates: dict[str, str] | None = None) -> Path:
    """A workspace with barcode_platemap.csv and one plate map per name."""
    plates = plates or {"SQ00015167": "C-7161-01-LM6-006", "SQ00015168": "C-7161-01-LM6-006", "SQ00015169": "C-7161-01-LM6-007"}
    base = root / "metadata" / "platemaps" / BATCH
    (base / "platemap").mkdir(parents=True)
    rows = "".join(f"{b},{n}\n" for b, n in plates.items())
    (base / "barcode_platemap.csv").write_text("Assay_Plate_Barcode,Plate_Map_Name\n" + rows)
    for name in set(plates.values()):
        (base / "platemap" / f"{name}.txt").write_text(platemap_text(name))
    return root


def platemap_file(root: Path, name: str) -> Path:
    return root / "metadata" / "platemaps" / BATCH / "platemap" / f"{name}.txt"


def barcode_file(root: Path) -> Path:
    return root / "metadata" / "platemaps" / BATCH / "barcode_platemap.csv"


def problems(root: Path, **kwargs: object) -> list[str]:
    with pytest.raises(MetadataError) as info:
        validate_metadata(str(root), BATCH, **kwargs)  # type: ignore[arg-type]
    return str(info.value).splitlines()


def profiles_for(wells: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"Metadata_Plate": "SQ00015167", "Metadata_Well": wells, "Cells_a": 1.0})


def test_valid_workspace(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    assert validate_metadata(str(root), BATCH) == []
    assert validate_metadata(root, BATCH, plates=["SQ00015167"], profiles={"SQ00015167": profiles_for(WELLS)}) == []
    barcodes = load_barcode_platemap(barcode_file(root))
    assert list(barcodes.columns) == ["Assay_Plate_Barcode", "Plate_Map_Name"]
    platemap = load_platemap(platemap_file(root, "C-7161-01-LM6-006"))
    assert list(platemap.columns) == ["plate_map_name", "well_position", "broad_sample", "mg_per_ml"]
    assert platemap["mg_per_ml"].dtype == float
    assert platemap["broad_sample"].isna().sum() == 16  # empty cells are missing values


def test_platemap_for_plate(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    assert platemap_name_for_plate(root, BATCH, "SQ00015169") == "C-7161-01-LM6-007"
    pm = platemap_for_plate(root, BATCH, "SQ00015169")
    assert (pm["plate_map_name"] == "C-7161-01-LM6-007").all() and len(pm) == 96
    with pytest.raises(MetadataError, match="SQ99.*not listed"):
        platemap_for_plate(root, BATCH, "SQ99")
    platemap_file(root, "C-7161-01-LM6-007").unlink()
    with pytest.raises(MetadataError, match="not found"):
        platemap_for_plate(root, BATCH, "SQ00015169")


def test_numeric_looking_barcodes_stay_text(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, {"000123": "map-a"})
    barcodes = load_barcode_platemap(barcode_file(root))
    assert barcodes["Assay_Plate_Barcode"].tolist() == ["000123"]
    assert platemap_name_for_plate(root, BATCH, "000123") == "map-a"


def test_comma_separated_platemap(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-007")
    path.write_text(platemap_text("C-7161-01-LM6-007", sep=","))
    [message] = problems(root)
    assert message.startswith(f"{path}:1:")
    assert "separated by commas; use tabs" in message
    with pytest.raises(MetadataError, match="use tabs"):
        load_platemap(path)


def test_missing_mandatory_columns(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    barcode_file(root).write_text("Assay_Plate_Barcode,PlateMap\nSQ1,x\n")
    [message] = problems(root)
    assert f"{barcode_file(root)}:1: missing column(s) Plate_Map_Name" in message
    root2 = make_workspace(tmp_path / "two")
    path = platemap_file(root2, "C-7161-01-LM6-006")
    path.write_text(path.read_text().replace("well_position", "Well"))
    [message] = problems(root2)
    assert f"{path}:1: missing column(s) well_position" in message


def test_platemap_name_must_match_file_name(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-007")
    text = path.read_text().splitlines()
    text[5] = text[5].replace("C-7161-01-LM6-007", "C-7161-01-LM6-07")
    path.write_text("\n".join(text) + "\n")
    [message] = problems(root)
    assert message.startswith(f"{path}:6: plate_map_name is 'C-7161-01-LM6-07'")
    assert "must be equal" in message


def test_missing_platemap_file(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-007")
    path.rename(path.with_suffix(".csv"))
    [message] = problems(root)
    assert message.startswith(f"{barcode_file(root)}:4: plate 'SQ00015169' uses plate map 'C-7161-01-LM6-007'")
    assert "does not exist" in message and "found C-7161-01-LM6-007.csv" in message


def test_duplicate_and_unknown_wells(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-006")
    wells = [*WELLS[:10], "A1", "Z99", "A05", "", *WELLS[14:]]
    path.write_text(platemap_text("C-7161-01-LM6-006", wells))
    found = problems(root)
    assert f"{path}:12: well 'A1' is not written like A01; write it as 'A01'" in found
    assert any(m.startswith(f"{path}:13: 'Z99' is not a well name") for m in found)
    assert f"{path}:14: well A05 appears again (first on line 6); each well may appear once per plate map" in found
    assert any(m.startswith(f"{path}:15: the well is empty") for m in found)
    assert len(found) == 4


def test_rows_not_separated_by_tabs(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, {"SQ1": "map"})
    path = platemap_file(root, "map")
    header, *rows = platemap_text("map").splitlines()
    path.write_text("\n".join([header, *(r.replace("\t", " ") for r in rows)]) + "\n")  # spaces
    [message] = problems(root)
    assert message == (
        f"{path}:2: 96 of 96 lines have fewer fields than the header (4); "
        "separate the columns of every line with tabs"
    )


def test_many_problems_are_capped_per_file(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, {"SQ1": "map"})
    path = platemap_file(root, "map")
    path.write_text(platemap_text("map", [f"{w}x" for w in WELLS]))
    found = problems(root)
    assert len(found) == 21 and found[-1] == f"{path}: 76 more problem(s) not shown"
    with pytest.raises(MetadataError, match="more problem"):
        load_platemap(path)


def test_well_names() -> None:
    for ok in ("A01", "H12", "P24", "AF48", "Z01", "AA01"):
        assert well_name_problem(ok) is None
    for bad in ("A00", "A49", "AG01", "a01", "A001x", "1A", "A 1"):
        assert well_name_problem(bad) is not None
    assert "'B03'" in str(well_name_problem("b3"))


def test_profile_wells_against_platemap(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    profiles = {"SQ00015167": profiles_for([*WELLS[2:], "I01"])}
    [message] = problems(root, plates=["SQ00015167"], profiles=profiles)
    assert message.startswith(f"{platemap_file(root, 'C-7161-01-LM6-006')}: plate 'SQ00015167' has profiles")
    assert "I01" in message and "add them to the plate map" in message
    # plate map wells without a profile are a warning (wells that were not imaged)
    warnings = validate_metadata(root, BATCH, plates=["SQ00015167"], profiles={"SQ00015167": profiles_for(WELLS[2:])})
    [warning] = warnings
    assert warning.startswith(f"{platemap_file(root, 'C-7161-01-LM6-006')}:2: plate 'SQ00015167' has no profile for 2")
    assert "A01, A02" in warning
    with pytest.raises(MetadataError, match="no profile"):
        validate_metadata(root, BATCH, profiles={"SQ00015167": profiles_for(WELLS[2:])}, strict=True)
    old = profiles_for(WELLS).rename(columns={"Metadata_Well": "Image_Metadata_Well"})
    assert validate_metadata(root, BATCH, plates=["SQ00015167"], profiles={"SQ00015167": old}) == []
    [message] = problems(root, profiles={"SQ00015167": old.drop(columns="Image_Metadata_Well")})
    assert "no Metadata_Well column" in message


def test_plate_not_in_barcode_map(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    [message] = problems(root, plates=["SQ00015167", "SQ0001"])
    assert message == f"{barcode_file(root)}: plate 'SQ0001' is not listed; add a line 'SQ0001,<plate map name>'"


def test_barcode_map_problems(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    barcode_file(root).write_text(
        "Assay_Plate_Barcode,Plate_Map_Name\nSQ1,C-7161-01-LM6-006\nSQ1,C-7161-01-LM6-007\n,C-7161-01-LM6-006\n"
    )
    found = problems(root)
    assert found[0].startswith(f"{barcode_file(root)}:3: plate 'SQ1' is listed again with plate map")
    assert found[1].startswith(f"{barcode_file(root)}:4: Assay_Plate_Barcode is empty")
    barcode_file(root).write_text("Assay_Plate_Barcode\tPlate_Map_Name\nSQ1\tC-7161-01-LM6-006\n")
    [message] = problems(root)
    assert "separated by tabs; use commas" in message
    barcode_file(root).unlink()
    with pytest.raises(MetadataError, match="file not found; create it"):
        validate_metadata(root, BATCH)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    platemap_file(root, "C-7161-01-LM6-007").write_text(platemap_text("C-7161-01-LM6-007", sep=","))
    path = platemap_file(root, "C-7161-01-LM6-006")
    path.write_text(platemap_text("C-7161-01-LM6-006", [*WELLS[:95], "A01"]))
    found = problems(root)
    assert len(found) == 2
    assert any("use tabs" in m for m in found) and any("appears again" in m for m in found)
    assert isinstance(MetadataError("x"), InputError)


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-006")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    barcode_file(root).write_bytes(b"\xef\xbb\xbf" + barcode_file(root).read_bytes())
    assert validate_metadata(root, BATCH) == []
    assert list(load_platemap(path).columns)[:2] == ["plate_map_name", "well_position"]


def test_1536_well_plate(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, {"SQ1": "big"})
    rows = [*"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "AA", "AB", "AC", "AD", "AE", "AF"]
    wells = [f"{r}{c:02d}" for r in rows for c in range(1, 49)]
    platemap_file(root, "big").write_text(platemap_text("big", wells))
    assert validate_metadata(root, BATCH, profiles={"SQ1": profiles_for(wells)}) == []


def test_external_metadata(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    ext_dir = root / "metadata" / "external_metadata"
    ext_dir.mkdir(parents=True)
    ext = ext_dir / "external_metadata.tsv"
    samples = [f"BRD-K{i:08d}-001-01-1" for i in range(96) if i % 6]
    ext.write_text("broad_sample\tpert_iname\n" + "".join(f"{s}\tname{i}\n" for i, s in enumerate(samples)))
    assert validate_metadata(root, BATCH, external_metadata=ext, merge_column="broad_sample") == []
    loaded = load_external_metadata(ext, merge_column="broad_sample")
    assert list(loaded.columns) == ["broad_sample", "pert_iname"] and len(loaded) == 80

    # missing keys are a warning, conflicting duplicates an error, a wrong column an error
    ext.write_text("broad_sample\tpert_iname\n" + "".join(f"{s}\tname{i}\n" for i, s in enumerate(samples[1:])))
    [warning] = validate_metadata(root, BATCH, plates=["SQ00015167"], external_metadata=ext, merge_column="broad_sample")
    assert "1 broad_sample value(s) have no row in the external metadata" in warning
    ext.write_text(f"broad_sample\tpert_iname\n{samples[0]}\ta\n{samples[0]}\tb\n")
    found = problems(root, plates=["SQ00015167"], external_metadata=ext, merge_column="broad_sample")
    assert found[0].startswith(f"{ext}:3: broad_sample '{samples[0]}' appears again with other values")
    [message] = problems(root, plates=["SQ00015167"], external_metadata=ext, merge_column="compound")
    assert f"{ext}:1: missing column(s) compound" in message
    with pytest.raises(MetadataError, match="use tabs"):
        ext.write_text("broad_sample,pert_iname\nx,y\n")
        load_external_metadata(ext, merge_column="broad_sample")


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="not found"):
        load_platemap(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(MetadataError, match="empty"):
        load_platemap(empty)


@pytest.mark.parametrize(
    ("encoding", "bom", "text"),
    [
        ("latin-1", b"", "Ménadione"),
        ("cp1252", b"", "compound \u2013 5\u00b5M"),
        ("latin-1", b"\xef\xbb\xbf", "caf\u00e9"),
        ("utf-16", b"", "plain"),
    ],
)
@pytest.mark.parametrize("kind", ["platemap", "external", "barcode"])
def test_non_utf8_is_refused_with_the_byte_offset(
    tmp_path: Path, encoding: str, bom: bytes, text: str, kind: str
) -> None:
    # Our choice: refuse rather than guess (a Latin-1 guess silently garbles names).
    root = make_workspace(tmp_path)
    name = "C-7161-01-LM6-006"
    if kind == "platemap":
        path = platemap_file(root, name)
        body = platemap_text(name).replace("BRD-K00000003-001-01-1", f"BRD-K00000003 {text}")
    elif kind == "barcode":
        path = barcode_file(root)
        body = f"Assay_Plate_Barcode,Plate_Map_Name\nSQ00015167,{name}\n# {text}\n"
    else:
        path = root / "metadata" / "external_metadata" / "external_metadata.tsv"
        path.parent.mkdir(parents=True)
        body = f"broad_sample\tpert_iname\nBRD-K00000001-001-01-1\t{text}\n"
    raw = bom + body.encode(encoding)
    path.write_bytes(raw)
    try:
        raw.decode("utf-8-sig")
        pytest.fail("fixture is valid UTF-8")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(bom)
    loaders = {
        "platemap": lambda: load_platemap(path),
        "barcode": lambda: load_barcode_platemap(path),
        "external": lambda: load_external_metadata(path, merge_column="broad_sample"),
    }
    with pytest.raises(MetadataError) as info:
        loaders[kind]()
    message = str(info.value)
    line = raw.count(b"\n", 0, offset) + 1
    assert message.startswith(f"{path}:{line}: not UTF-8") and f"byte offset {offset}" in message
    # the fix names the encoding the file is in: UTF-16 declares itself with a byte-order mark
    assert f"iconv -f {'utf-16' if encoding == 'utf-16' else 'latin1'} -t utf-8" in message
    assert isinstance(info.value, ValueError)
    ext = path if kind == "external" else None
    found = problems(root, plates=["SQ00015167"], external_metadata=ext, merge_column="broad_sample" if ext else None)
    assert any(f"byte offset {offset}" in p for p in found)


def test_utf8_names_load(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    path = platemap_file(root, "C-7161-01-LM6-006")
    path.write_bytes(b"\xef\xbb\xbf" + platemap_text("C-7161-01-LM6-006").replace("0.30", "café").encode())
    assert "café" in load_platemap(path)["mg_per_ml"].tolist()


def test_external_metadata_repeated_key_refused_on_load(tmp_path: Path) -> None:
    ext = tmp_path / "external_metadata.tsv"
    ext.write_text("broad_sample\tpert_iname\nBRD-1\ta\nBRD-2\tb\nBRD-1\tc\nBRD-2\tb\n")
    with pytest.raises(MetadataError, match=f"{ext}:4: broad_sample 'BRD-1' appears again"):
        load_external_metadata(ext, merge_column="broad_sample")
    # identical repeated rows are harmless; without a merge column nothing is checked
    ext.write_text("broad_sample\tpert_iname\nBRD-1\ta\nBRD-1\ta\n")
    assert len(load_external_metadata(ext, merge_column="broad_sample")) == 2


@pytest.mark.parametrize("kept", [39, 95, 0])
def test_profile_wells_missing_from_the_platemap_name_the_option(tmp_path: Path, kept: int) -> None:
    root = make_workspace(tmp_path)
    platemap_file(root, "C-7161-01-LM6-006").write_text(platemap_text("C-7161-01-LM6-006", WELLS[:kept]) if kept
                                                        else platemap_text("C-7161-01-LM6-006", ["H12"]))
    profiles = {"SQ00015167": profiles_for(WELLS)}
    missing = 96 - (kept or 1)
    [message] = problems(root, plates=["SQ00015167"], profiles=profiles)
    assert f"{missing} well(s) the plate map lacks" in message and "unmatched_wells: drop" in message
    notes = validate_metadata(root, BATCH, plates=["SQ00015167"], profiles=profiles, unmatched_wells="drop")
    assert any(f"{missing} well(s)" in n and "drops them" in n for n in notes)
    with pytest.raises(MetadataError):
        validate_metadata(root, BATCH, plates=["SQ00015167"], profiles=profiles, unmatched_wells="drop", strict=True)
    with pytest.raises(ValueError, match="unmatched_wells"):
        validate_metadata(root, BATCH, profiles=profiles, unmatched_wells="warn")


def test_non_utf8_platemap_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    platemap_file(root, "C-7161-01-LM6-007").write_bytes(platemap_text("C-7161-01-LM6-007").encode("utf-16"))
    platemap_file(root, "C-7161-01-LM6-006").write_text(platemap_text("C-7161-01-LM6-006", [*WELLS, "A01"]))
    found = problems(root)
    assert any("LM6-007.txt:1: not UTF-8" in p for p in found)
    assert any("well A01 appears again" in p for p in found)


def test_profile_rows_without_a_well_are_unmatched(tmp_path: Path) -> None:
    root = make_workspace(tmp_path)
    profiles = profiles_for(WELLS)
    profiles.loc[[3, 4], "Metadata_Well"] = None
    [message] = problems(root, plates=["SQ00015167"], profiles={"SQ00015167": profiles})
    assert "2 row(s) with no Metadata_Well" in message
