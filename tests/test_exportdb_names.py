"""The ExportToDatabase route's messages name the database's tables and files, never the scratch CSVs it reads
through, and name integers float64 cannot hold as the CSV route does."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cytoprofile.errors import InputError
from cytoprofile.exportdb import collate_export

from . import faults
from .exportdb_builders import BATCH, csv_workspace, db_workspace, run_export


def _texts(report: dict[str, Any]) -> list[str]:
    """Every message of the report's site entries."""
    out = []
    for s in report["sites"]:
        out += [s.get("reason") or "", s.get("file") or "", *s.get("warnings", []), *s.get("notes", [])]
    return out


@pytest.mark.parametrize("prefix", ["MyExpt_", ""])
def test_a_table_missing_in_one_file_is_named_as_that_table(tmp_path: Path, prefix: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=2, table_prefix=prefix)
    faults.run_sql(files[1], f'DROP TABLE "{prefix}Per_Cells"')
    with caplog.at_level(logging.WARNING):
        got = run_export(db_ws, "P1")
    bad = [s for s in got["report"]["sites"] if s["status"] != "ok"]
    assert bad
    for s in bad:
        assert s["reason"] == f"table {prefix}Per_Cells is missing in analysis/{BATCH}/P1/run2.sqlite"
        assert s["file"].startswith(f"analysis/{BATCH}/P1/run2.sqlite (image ")
    assert not [t for t in _texts(got["report"]) if ".csv" in t]
    said = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert said and all(f"table {prefix}Per_Cells is missing in" in m and ".csv" not in m for m in said)


def test_a_table_missing_in_every_file_is_named_as_a_table(tmp_path: Path) -> None:
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], 'DROP TABLE "MyExpt_Per_Cells"')
    with pytest.raises(InputError) as caught:
        collate_export(db_ws, BATCH, "P1")
    assert f"no file has a Cells object table (analysis/{BATCH}/P1/run1.sqlite)" in str(caught.value)
    assert ".csv" not in str(caught.value)


@pytest.mark.parametrize("declared", ["NUMERIC", "INTEGER", ""])
@pytest.mark.parametrize("others", ["7", "1.5"])
def test_integers_above_2_53_are_named_by_table_and_image(tmp_path: Path, declared: str, others: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """An integer float64 cannot hold in a measurement column (of any declared type that keeps integers) is named
    with its table, file and ImageNumber, as the CSV route names file, column and line."""
    csv_ws = csv_workspace(tmp_path, long_name=False)
    db_ws, files = db_workspace(tmp_path, csv_ws, "P1", files=1)
    faults.run_sql(files[0], f'ALTER TABLE "MyExpt_Per_Cells" ADD COLUMN Cells_Intensity_Big {declared}',
                   f'UPDATE "MyExpt_Per_Cells" SET Cells_Intensity_Big = {others}',
                   'UPDATE "MyExpt_Per_Cells" SET Cells_Intensity_Big = 9007199254740993 '
                   'WHERE ImageNumber = 2 AND Cells_Number_Object_Number = 3')
    with caplog.at_level(logging.WARNING):
        got = run_export(db_ws, "P1")
    sites = {s["site"]: s for s in got["report"]["sites"]}
    site = next(name for name, src in got["report"]["export_database"]["sites"].items() if src["image_number"] == 2)
    assert {s["status"] for s in sites.values()} == {"ok"}
    warnings = sites[site]["warnings"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"MyExpt_Per_Cells of analysis/{BATCH}/P1/run1.sqlite (ImageNumber 2): column "
                                  "Intensity_Big: 1 integer(s) above 2^53 (first '9007199254740993', object row ")
    assert warnings[0].endswith("stored rounded to the nearest float64 (9007199254740992); measurements are float64")
    assert any(warnings[0] in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if ".csv" in r.getMessage()]
    saved = json.loads(Path(got["result"].outputs["report"]).read_text())
    assert saved["sites"] == got["report"]["sites"]


@pytest.mark.parametrize("strata", [["Metadata_Plate", "Metadata_Well", "Metadata_Timepoint"],
                                    ["Metadata_Plate", "Metadata_Well", "Metadata_Run"]])
def test_every_image_refused_names_the_files_not_the_scratch_copy(tmp_path: Path, strata: list[str]) -> None:
    """The one error line of a database plate whose images are all refused names the .sqlite files, once."""
    from cytoprofile.errors import InputError

    db_ws, _ = db_workspace(tmp_path, csv_workspace(tmp_path), "P1")
    with pytest.raises(InputError) as caught:
        run_export(db_ws, "P1", strata=strata)
    message = str(caught.value)
    assert message.startswith("the images of analysis/"), message
    assert "scratch copy" not in message and message.count(f"lacks the strata column(s) {strata[-1]}") == 1, message
