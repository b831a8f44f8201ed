"""Backend creation against real CellProfiler output and the reference aggregation."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cytoprofile import io
from cytoprofile.collate import collate, collate_plate, trusted_outputs
from cytoprofile.errors import InputError, QuarantineError
from cytoprofile.synth import synth

from .conftest import link_sites
from .reference import assert_profiles_equal, old_layout_sqlite, pycytominer_profiles

DATA_B = "cytominer-database-fixtures/data_b"
JUMP = "jump-BR00121431/analysis/2021_04_20_Target2/BR00121431/analysis"
COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


def _data_b_workspace(tmp_path: Path, shared: Path) -> Path:
    src = shared / DATA_B
    link_sites(tmp_path, "B", "SQ00015116", {p.name: p for p in src.iterdir() if p.is_dir()})
    return tmp_path


@pytest.mark.parametrize("backend", [("sqlite",), ("parquet",), ("sqlite", "parquet")])
def test_data_b_quarantines_three_sites_with_reasons(tmp_path: Path, shared_data: Path, backend: tuple[str, ...]) -> None:
    ws = _data_b_workspace(tmp_path, shared_data)
    result = collate_plate(ws, "B", "SQ00015116", backend=backend)  # type: ignore[arg-type]
    assert result.status == "done"
    report = json.loads(Path(result.outputs["report"]).read_text())
    status = {s["site"]: (s["status"], s["reason"]) for s in report["sites"]}
    assert [k for k, v in status.items() if v[0] == "ok"] == ["A01-1", "A01-2", "B01-1", "B01-2"]
    assert "empty (0 bytes)" in status["E17-4"][1] and "Cells.csv" in status["E17-4"][1]
    assert "wrong number of fields" in status["J21-2"][1] and "line 2" in status["J21-2"][1]
    assert "no data row" in status["N23-5"][1]
    for table in COMPARTMENTS:
        assert report["tables"][table]["rows_in"] == report["tables"][table]["rows_out"] == 40
    assert report["totals"]["sites_quarantined"] == 3
    if "sqlite" in backend:
        conn = sqlite3.connect(result.outputs["sqlite"])
        assert conn.execute("SELECT COUNT(*) FROM Cells").fetchone()[0] == 40
        assert conn.execute("SELECT COUNT(*) FROM Image").fetchone()[0] == 4
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"table_image_idx", "plate_well_image_idx", "table_image_object_cells_idx"} <= indexes
        conn.close()
    if "parquet" in backend:
        prefix = Path(result.outputs["parquet"]).parent / "SQ00015116"
        assert pq.ParquetFile(f"{prefix}_Cells.parquet").metadata.num_rows == 40


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_data_b_matches_reference(tmp_path: Path, shared_data: Path, operation: str) -> None:
    ws = _data_b_workspace(tmp_path / "ws", shared_data)
    result = collate_plate(ws, "B", "SQ00015116", operation=operation, image_features=False)  # type: ignore[arg-type]
    ours = io.read_table(result.outputs["profiles"])
    good = [shared_data / DATA_B / s for s in ("A01-1", "A01-2", "B01-1", "B01-2")]
    ref_db = old_layout_sqlite(good, tmp_path / "ref.sqlite", COMPARTMENTS)
    ref = pycytominer_profiles(ref_db, operation=operation, image_features=False)
    assert_profiles_equal(ours, ref)
    # the reference aggregation reads our backend unchanged, with the same result
    assert_profiles_equal(ours, pycytominer_profiles(Path(result.outputs["sqlite"]), operation=operation, image_features=False))


def test_jump_partial_sites_are_quarantined_not_zero(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / JUMP
    link_sites(tmp_path / "ws", "2021_04_20_Target2", "BR00121431", {p.name: p for p in src.iterdir()})
    result = collate_plate(tmp_path / "ws", "2021_04_20_Target2", "BR00121431")
    sites = {s["site"]: s for s in result.report["sites"]}  # type: ignore[index]
    for name in ("BR00121431-A01-2", "BR00121431-A02-2"):
        assert sites[name]["status"] == "quarantined"
        assert sites[name]["reason"] == "Cells.csv is missing (other sites have it)"
    ours = io.read_table(result.outputs["profiles"])
    assert ours["Metadata_Site_Count"].tolist() == [1, 1]
    assert ours.loc[0, "Metadata_Object_Count"] == 89
    good = [src / "BR00121431-A01-1", src / "BR00121431-A02-1"]
    ref = pycytominer_profiles(old_layout_sqlite(good, tmp_path / "ref.sqlite", COMPARTMENTS))
    assert_profiles_equal(ours, ref)


def test_jump_reference_columns_reproduced_with_mean_and_no_image_features(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / JUMP
    link_sites(tmp_path, "2021_04_20_Target2", "BR00121431", {p.name: p for p in src.iterdir()})
    result = collate_plate(tmp_path, "2021_04_20_Target2", "BR00121431", operation="mean", image_features=False)
    ours = io.read_table(result.outputs["profiles"])
    reference = pd.read_csv(shared_data / "jump-BR00121431/reference/BR00121431_main.csv", nrows=0)
    assert list(ours.columns) == list(reference.columns)
    assert ours["Metadata_Well"].tolist() == ["A01", "A02"]


def test_examplehuman_extra_object_type_and_run_metadata(tmp_path: Path, shared_data: Path) -> None:
    src = shared_data / "examplehuman"
    link_sites(tmp_path / "ws", "B", "P", {"P-A01-1": src})
    result = collate_plate(tmp_path / "ws", "B", "P", backend=("sqlite",), image_features=False)
    conn = sqlite3.connect(result.outputs["sqlite"])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"Image", "Cells", "Cytoplasm", "Nuclei", "PH3", "cytoprofile_run"}
    assert conn.execute("SELECT COUNT(*) FROM PH3").fetchone()[0] == 22
    conn.close()
    assert "Experiment.csv" in result.report["run_metadata"]  # type: ignore[index]
    ours = io.read_table(result.outputs["profiles"])
    # Image.csv has no plate/well: both come from the folder name PLATE-WELL-SITE
    assert ours[["Metadata_Plate", "Metadata_Well"]].values.tolist() == [["P", "A01"]]
    linked = tmp_path / "ws/analysis/B/P/analysis/P-A01-1"
    ref = pycytominer_profiles(old_layout_sqlite([linked], tmp_path / "ref.sqlite", COMPARTMENTS), image_features=False)
    assert_profiles_equal(ours, ref)
    with_ph3 = collate_plate(tmp_path / "ws", "B", "P", compartments=("Cells", "PH3"), image_features=False, overwrite=True)
    profiles = io.read_table(with_ph3.outputs["profiles"])
    assert any(c.startswith("PH3_") for c in profiles.columns)
    assert profiles.loc[0, "Metadata_Object_Count"] == 289


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_synthetic_plate_matches_reference_with_image_features(tmp_path: Path, operation: str) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=6, sites=3, cells=25, features=30, seed=3)
    result = collate_plate(ws, "BATCH1", "P1", operation=operation)  # type: ignore[arg-type]
    ours = io.read_table(result.outputs["profiles"])
    sites = sorted((ws / "analysis/BATCH1/P1/analysis").iterdir())
    ref = pycytominer_profiles(old_layout_sqlite(sites, tmp_path / "ref.sqlite", COMPARTMENTS), operation=operation)
    assert_profiles_equal(ours, ref)
    assert ours.columns[:3].tolist() == ["Metadata_Plate", "Metadata_Well", "Metadata_Site_Count"]


def test_union_schema_fills_missing_keeps_extra_and_zero_cell_site(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=3, sites=2, cells=10, features=8, seed=1)
    site_dir = ws / "analysis/BATCH1/P1/analysis"
    first = site_dir / "P1-A01-1"
    # the site that sorts first lacks a column (FlagImage skipped a measurement)
    image = pd.read_csv(first / "Image.csv").drop(columns=["Granularity_1_DNA"])
    image.to_csv(first / "Image.csv", index=False)
    # a later site has an extra object column
    later = site_dir / "P1-A03-2"
    cells = pd.read_csv(later / "Cells.csv")
    cells["Intensity_Extra_DNA"] = 1.5
    cells.to_csv(later / "Cells.csv", index=False)
    # a site with zero cells is valid
    zero = site_dir / "P1-A02-2"
    for c in COMPARTMENTS:
        header = (zero / f"{c}.csv").read_text().splitlines()[0]
        (zero / f"{c}.csv").write_text(header + "\n")
    img = pd.read_csv(zero / "Image.csv")
    img[["Count_Cells", "Count_Cytoplasm", "Count_Nuclei"]] = 0
    img.to_csv(zero / "Image.csv", index=False)

    result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    report = result.report
    assert report is not None
    assert report["totals"]["sites_quarantined"] == 0
    assert report["missing_columns"]["Image"]["Granularity_1_DNA"] == ["P1-A01-1"]
    assert len(report["missing_columns"]["Cells"]["Intensity_Extra_DNA"]) == 5
    conn = sqlite3.connect(result.outputs["sqlite"])
    assert conn.execute("SELECT COUNT(*) FROM Image WHERE Granularity_1_DNA IS NULL").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM Cells WHERE Cells_Intensity_Extra_DNA = 1.5").fetchone()[0] > 0
    conn.close()
    ours = io.read_table(result.outputs["profiles"]).set_index("Metadata_Well")
    assert ours.loc["A02", "Metadata_Site_Count"] == 2  # the zero-cell site still counts as a site
    assert ours.loc["A03", "Cells_Intensity_Extra_DNA"] == 1.5
    assert pd.isna(ours.loc["A01", "Cells_Intensity_Extra_DNA"])


def test_hostile_header_is_just_a_column(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=1, sites=1, cells=5, features=4)
    site = ws / "analysis/BATCH1/P1/analysis/P1-A01-1"
    cells = pd.read_csv(site / "Cells.csv")
    cells['x"; DROP TABLE Image; --'] = 2.0
    cells.to_csv(site / "Cells.csv", index=False)
    result = collate_plate(ws, "BATCH1", "P1")
    conn = sqlite3.connect(result.outputs["sqlite"])
    assert conn.execute("SELECT COUNT(*) FROM Image").fetchone()[0] == 1
    cols = [r[1] for r in conn.execute("PRAGMA table_info(Cells)")]
    assert 'Cells_x"; DROP TABLE Image; --' in cols
    conn.close()


def _corrupt_value(path: Path, text: str) -> None:
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = text
    lines[1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "Cells.csv").write_bytes(b"ImageNumber,ObjectNumber,AreaShape_Area\n1,1,\xff\xfe\n"), "Cells.csv"),
        (lambda p: _corrupt_value(p / "Cytoplasm.csv", "12..5e"), "'12..5e' is not a number"),
        (lambda p: (p / "Image.csv").unlink(), "Image.csv is missing"),
    ],
)
def test_bad_files_quarantine_the_site(tmp_path: Path, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    damage(ws / "analysis/BATCH1/P1/analysis/P1-A02-1")
    result = collate_plate(ws, "BATCH1", "P1")
    bad = [s for s in result.report["sites"] if s["status"] != "ok"]  # type: ignore[index]
    assert [s["site"] for s in bad] == ["P1-A02-1"]
    assert reason in bad[0]["reason"]
    assert bad[0]["file"].startswith("analysis/BATCH1/P1/analysis/P1-A02-1/")


def test_strict_fails_and_writes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1", "P2"], wells=96, well_subset=3, sites=2, cells=5, features=4, faults=True)
    results = collate(ws, "BATCH1", ["P1", "P2"], strict=True)
    assert [r.status for r in results] == ["failed", "done"]
    assert "quarantined" in results[0].message
    assert not (ws / "backend/BATCH1/P1").exists()  # no empty folder either


def test_skip_complete_plate_and_overwrite(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    first = collate_plate(ws, "BATCH1", "P1")
    assert first.status == "done"
    again = collate_plate(ws, "BATCH1", "P1")
    assert again.status == "skipped" and "--overwrite" in again.message
    assert collate_plate(ws, "BATCH1", "P1", overwrite=True).status == "done"


def test_aggregate_only_on_our_backend_and_parquet(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=4, sites=2, cells=12, features=10)
    result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    streamed = io.read_table(result.outputs["profiles"])
    for kind in ("sqlite", "parquet"):
        again = collate_plate(ws, "BATCH1", "P1", backend=(kind,), aggregate_only=True, overwrite=True)  # type: ignore[arg-type]
        assert_profiles_equal(io.read_table(again.outputs["profiles"]), streamed, rtol=1e-12)


def test_changed_options_rebuild_and_replace_stale_outputs(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    collate_plate(ws, "BATCH1", "P1")
    mean = collate_plate(ws, "BATCH1", "P1", operation="mean")
    assert mean.status == "done" and mean.report["options"]["operation"] == "mean"  # type: ignore[index]
    again = collate_plate(ws, "BATCH1", "P1", operation="mean")
    assert again.status == "skipped"
    parquet = collate_plate(ws, "BATCH1", "P1", backend=("parquet",), profile_format="parquet", operation="mean")
    assert parquet.status == "done"
    left = sorted(p.name for p in (ws / "backend/BATCH1/P1").iterdir())
    # the SQLite backend is still correct for these inputs and options: kept; one profile format only
    assert "P1.sqlite" in left and "P1.csv" not in left and "P1.parquet" in left
    _, trusted = trusted_outputs(ws, "BATCH1", "P1")
    assert {"P1.sqlite", "P1.parquet", "P1_Cells.parquet", "P1_Image.parquet"} <= set(trusted)


def test_rerun_with_fewer_outputs_keeps_current_and_replaces_stale(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=3, sites=2, cells=6, features=5)
    out = ws / "backend/BATCH1/P1"
    args = ["collate", str(ws), "BATCH1", "P1", "-q"]
    assert main([*args, "--backend", "sqlite", "--backend", "parquet"]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    # fewer outputs asked for, same options: nothing is stale, nothing is deleted or rebuilt
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == first
    # other options: the Parquet backend not asked for would be stale, so it is replaced, and that is said
    assert main([*args, "--operation", "mean"]) == 0
    said = capsys.readouterr().err
    assert said.count("WARNING") == 1  # one message (the terminal may wrap it)
    assert "replacing" in said and "operation" in said and "P1_*.parquet" in said
    report, trusted = trusted_outputs(ws, "BATCH1", "P1")
    assert report is not None and report["options"]["operation"] == "mean"
    assert all(report["outputs"][n]["generation"] == report["generation"] for n in trusted)
    assert {"P1.sqlite", "P1_Image.parquet", "P1_Cells.parquet", "P1.csv"} <= set(trusted)
    ours = io.read_table(out / "P1.csv")
    again = collate_plate(ws, "BATCH1", "P1", backend=("parquet",), aggregate_only=True, operation="mean", overwrite=True)
    assert_profiles_equal(io.read_table(again.outputs["profiles"]), ours, rtol=1e-12)


def test_all_sites_untrusted_says_so(tmp_path: Path) -> None:

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    for site in (ws / "analysis/BATCH1/P1/analysis").iterdir():
        (site / "Cells.csv").write_bytes(b"")
    with pytest.raises(InputError, match="all 2 site"):
        collate_plate(ws, "BATCH1", "P1")


SRC = str(Path(__file__).resolve().parents[1] / "src")
_HOLD = """
import sys, time
from cytoprofile.workspace import plate_lock
with plate_lock(sys.argv[1], "BATCH1", "P1"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _python(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kwargs)


def test_second_collate_of_a_plate_names_the_holder_or_waits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    holder = _python("-c", _HOLD, str(ws), "60", stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 1
        assert f"plate P1 is being collated by process {holder.pid}" in capsys.readouterr().err
        assert not (ws / "backend/BATCH1/P1").exists()
    finally:
        holder.kill()
        holder.wait()
    holder = _python("-c", _HOLD, str(ws), "1.5", stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        assert main(["collate", str(ws), "BATCH1", "P1", "-q", "--wait"]) == 0
        assert time.monotonic() - t0 > 0.5
    finally:
        holder.wait()
    assert (ws / "backend/BATCH1/P1/P1.report.json").exists() and not (ws / "backend/BATCH1/.P1.lock").exists()


def test_two_collates_of_one_plate_at_once(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=6, sites=2, cells=30, features=10)
    reference = collate_plate(ws, "BATCH1", "P1")
    expected = Path(reference.outputs["profiles"]).read_bytes()
    for flags in (["--wait"], []):
        args = ["-m", "cytoprofile", "collate", str(ws), "BATCH1", "P1", "--overwrite", "-q", *flags]
        procs = [_python(*args, stderr=subprocess.PIPE) for _ in range(2)]
        outs = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
        codes = sorted(code for code, _ in outs)
        if flags:
            assert codes == [0, 0], outs
        else:  # the second fails fast naming the first, or they did not overlap
            assert codes in ([0, 0], [0, 1]), outs
            assert all("is being collated by process" in err for code, err in outs if code == 1)
        assert all("internal error" not in err for _, err in outs)
        _, trusted = trusted_outputs(ws, "BATCH1", "P1")
        assert {"P1.sqlite", "P1.csv"} <= set(trusted)
        assert Path(trusted["P1.csv"]).read_bytes() == expected
        assert not [p for p in (ws / "backend/BATCH1/P1").iterdir() if p.name.startswith(".")]


_KILL_AT = """
import os, signal, sys
from cytoprofile.cli import main
n = int(sys.argv[1]); calls = [0]
real_replace, real_unlink = os.replace, os.unlink
def _hook():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
def replace(a, b, **kw):
    _hook(); return real_replace(a, b, **kw)
def unlink(p, **kw):
    _hook(); return real_unlink(p, **kw)
os.replace, os.unlink = replace, unlink
code = main(sys.argv[2:])
print("calls", calls[0], flush=True)
sys.exit(code)
"""


def _plate_state(out: Path) -> dict[str, Any]:
    """What a build leaves that a reader sees: profiles bytes, backend rows, report without timings."""
    conn = sqlite3.connect(out / "P1.sqlite")
    rows = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("Image", "Cells", "Cytoplasm", "Nuclei")}
    conn.close()
    report = json.loads((out / "P1.report.json").read_text())
    for key in ("seconds", "generation", "outputs"):
        report.pop(key)
    report["input_files"].pop("recorded_ns")  # when the inputs were looked at, a time like "seconds"
    return {"profiles": (out / "P1.csv").read_bytes(), "rows": rows, "parquet": pq.read_table(out / "P1_Cells.parquet").num_rows,
            "report": report, "files": sorted(p.name for p in out.iterdir())}


def test_killed_overwrite_leaves_a_consistent_plate_and_a_rerun_finishes(tmp_path: Path) -> None:
    from cytoprofile.collate import plate_profiles

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=4, sites=2, cells=10, features=6)
    out = ws / "backend/BATCH1/P1"
    build = ["collate", str(ws), "BATCH1", "P1", "--backend", "sqlite", "--backend", "parquet", "-q"]
    killed = [*build, "--overwrite", "--operation", "mean"]
    run = _python("-c", _KILL_AT, "0", *killed, stdout=subprocess.PIPE)
    stdout, _ = run.communicate(timeout=300)
    assert run.returncode == 0
    calls = int(stdout.split()[-1])
    expected = _plate_state(out)
    old = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"), overwrite=True)  # the median build
    assert old.status == "done"
    median = (out / "P1.csv").read_bytes()
    assert median != expected["profiles"]
    for moment in sorted({1, 2, calls // 3, calls // 2, calls - 3, calls - 2, calls - 1, calls}):
        run = _python("-c", _KILL_AT, str(moment), *killed, stdout=subprocess.PIPE)
        run.communicate(timeout=300)
        assert run.returncode == -signal.SIGKILL, moment
        # at every moment a reader sees the old set, or the new set, or an unfinished plate: never a mix
        report, trusted = trusted_outputs(ws, "BATCH1", "P1")
        if report is not None:
            assert set(trusted) == set(report["outputs"]), moment
        try:
            seen = plate_profiles(ws, "BATCH1", "P1")
        except InputError:
            seen = None
        assert seen is None or Path(seen).read_bytes() in (median, expected["profiles"]), moment
        again = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"), operation="mean")
        assert again.status in ("done", "skipped"), moment
        assert _plate_state(out) == expected, moment
        collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"), overwrite=True)  # back to the median build


def test_readers_trust_only_outputs_the_report_vouches_for(tmp_path: Path) -> None:
    import shutil

    from cytoprofile.collate import plate_profiles

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    out = ws / "backend/BATCH1/P1"
    collate_plate(ws, "BATCH1", "P1")
    saved = tmp_path / "median"
    shutil.copytree(out, saved)
    collate_plate(ws, "BATCH1", "P1", operation="mean")
    assert plate_profiles(ws, "BATCH1", "P1") == str(out / "P1.csv")
    # an output of another build under the final name (a copy, a concurrent run) is not trusted
    for name in ("P1.csv", "P1.csv.generation", "P1.sqlite"):
        shutil.copy(saved / name, out / name)
    report, trusted = trusted_outputs(ws, "BATCH1", "P1")
    assert report is not None and not {"P1.csv", "P1.sqlite"} & set(trusted)
    with pytest.raises(InputError, match="does not match P1.report.json"):
        plate_profiles(ws, "BATCH1", "P1")
    with pytest.raises(InputError, match="does not match"):
        collate_plate(ws, "BATCH1", "P1", aggregate_only=True, overwrite=True)
    assert collate_plate(ws, "BATCH1", "P1", operation="mean").status == "done"  # not skipped: rebuilt
    # ours without a report is an interrupted build; the old tools' files (no id) are used as they are
    (out / "P1.report.json").unlink()
    with pytest.raises(InputError, match="collate was interrupted"):
        plate_profiles(ws, "BATCH1", "P1")
    (out / "P1.csv.generation").unlink()
    assert plate_profiles(ws, "BATCH1", "P1") == str(out / "P1.csv")


@pytest.mark.parametrize("change", ["new-site", "removed-site", "file-resized", "empty-site-folder"])
def test_rerun_after_the_inputs_changed_rebuilds(tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture) -> None:
    """A finished plate whose site files changed is rebuilt, never skipped with rows left out."""
    from . import faults

    plate_dir = faults.small_plate(tmp_path, wells=2)
    first = collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    assert first.status == "done"
    assert collate_plate(tmp_path, faults.BATCH, faults.PLATE).status == "skipped"
    sites = sorted(plate_dir.iterdir())
    if change == "new-site":
        new = faults.copy_site(plate_dir, sites[0], sites[0].name.replace("A01", "A03"))
        faults.set_image_value(new, "Metadata_Well", "A03")
    elif change == "removed-site":
        import shutil

        shutil.rmtree(sites[-1])
    elif change == "empty-site-folder":  # a build quarantines it: a skip would hide that (--strict passed)
        (plate_dir / f"{faults.PLATE}-B01-1").mkdir()
    else:
        faults.drop_rows(sites[0], "Cells", 1)
        faults.drop_rows(sites[0], "Cytoplasm", 1)
        faults.drop_rows(sites[0], "Nuclei", 1)
    again = collate_plate(tmp_path, faults.BATCH, faults.PLATE)
    assert again.status == "done" and again.report is not None
    assert "input files changed" in caplog.text
    faults.assert_rows_accounted(again, plate_dir)
    assert collate_plate(tmp_path, faults.BATCH, faults.PLATE).status == "skipped"
    if change == "empty-site-folder":  # the skip says what the build said (before: a skip passed --strict)
        with pytest.raises(QuarantineError, match="P1-B01-1: Image.csv is missing"):
            collate_plate(tmp_path, faults.BATCH, faults.PLATE, strict=True)


def test_an_unknown_single_cell_format_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cytoprofile.cli import main

    assert main(["collate", str(tmp_path), "B", "P", "--single-cells", "--single-cell-format", "xyz"]) == 1
    assert "single_cells (--single-cell-format) xyz: choose parquet or anndata" in capsys.readouterr().err


def test_a_callers_rebuild_reason_is_said_in_place_of_overwrite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=1, cells=4, features=3)
    assert collate_plate(tmp_path, "BATCH1", "P1").status == "done"
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        assert collate_plate(tmp_path, "BATCH1", "P1", overwrite=True, rebuild_reason="the run files changed").status == "done"
        assert collate_plate(tmp_path, "BATCH1", "P1", overwrite=True).status == "done"
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "; replacing " in r.getMessage()]
    assert [(level, text.split("; replacing ")[0]) for level, text in said] == [
        (logging.WARNING, "P1: the run files changed"), (logging.INFO, "P1: --overwrite")]


def test_plates_named_twice_are_each_named_once_in_order(tmp_path: Path) -> None:

    with pytest.raises(InputError, match=r"^plate P1, P2 given more than once; name each plate once$"):
        collate(tmp_path, "BATCH1", ["P2", "P1", "P3", "P2", "P1", "P2"])
    assert not list(tmp_path.iterdir())  # refused before anything is read or made


@pytest.mark.parametrize(("first", "then", "gone"), [
    ({"profile_format": "csv"}, {"profile_format": "parquet"}, "P1.csv"),
    ({"profile_format": "parquet"}, {"profile_format": "csv"}, "P1.parquet"),
])
def test_a_switched_output_is_said_once_as_the_earlier_build(tmp_path: Path, first: dict[str, Any],
                                                             then: dict[str, Any], gone: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The earlier output a new build does not make is removed with one warning; its sidecar is not
    reported as left by an interrupted build (nothing was interrupted)."""
    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=1, cells=3, features=3)
    batch = "BATCH1"
    collate_plate(tmp_path, batch, "P1", **first)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cytoprofile"):
        result = collate_plate(tmp_path, batch, "P1", overwrite=True, **then)
    assert result.status == "done", result.message
    said = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert any(f"removed {gone} of the earlier build" in m for m in said), said
    assert not [m for m in said if "interrupted" in m], said
    assert not (tmp_path / "backend" / batch / "P1" / gone).exists()


@pytest.mark.parametrize(("first", "then"), [
    ({"operation": "mean"}, {"operation": "median"}),
    ({}, {"strata": ("Metadata_Plate", "Metadata_Well", "Metadata_Site")}),
    ({}, {"image_features": False}),
])
def test_aggregate_only_with_other_options_re_aggregates_and_says_so(
        tmp_path: Path, first: dict[str, Any], then: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Profiles made with other options are never kept as current (they were: skipped, exit 0)."""
    from cytoprofile.aggregate import aggregate

    synth(tmp_path, plates=["P1"], wells=96, well_subset=2, sites=2, cells=4, features=3)
    done = collate_plate(tmp_path, "BATCH1", "P1", **first)
    with caplog.at_level(logging.WARNING, logger="cytoprofile"):
        again = collate_plate(tmp_path, "BATCH1", "P1", aggregate_only=True, **{**first, **then})
    assert again.status == "done", again.message
    assert any("re-aggregating: the profiles were made with other options" in r.getMessage() for r in caplog.records)
    options = {"operation": "median", "strata": ("Metadata_Plate", "Metadata_Well"), "image_features": True,
               **first, **then}
    expected = aggregate(done.outputs["sqlite"], **options)
    got = pd.read_csv(again.outputs["profiles"])
    assert len(got) == len(expected) and list(got.columns) == list(expected.columns)
    np_cols = [c for c in expected.columns if not c.startswith("Metadata_")]
    assert np.allclose(got[np_cols].to_numpy(float), expected[np_cols].to_numpy(float), rtol=1e-4, equal_nan=True)
    assert collate_plate(tmp_path, "BATCH1", "P1", aggregate_only=True, **{**first, **then}).status == "skipped"


def test_strict_fails_a_current_build_that_quarantined_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A build that quarantined a site, re-run with --strict, fails as a first --strict build does (not
    "skipped" with exit 0); without --strict it is still skipped."""
    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    (ws / "analysis/BATCH1/P1/analysis/P1-A02-1/Cells.csv").write_text("")
    assert main(["collate", str(ws), "BATCH1", "P1", "-q"]) == 0
    built = sorted(p.name for p in (ws / "backend/BATCH1/P1").iterdir())
    capsys.readouterr()
    assert main(["collate", str(ws), "BATCH1", "P1", "--strict", "-q"]) == 1
    err = capsys.readouterr().err
    assert "P1-A02-1" in err and "--strict" in err and "Traceback" not in err
    assert sorted(p.name for p in (ws / "backend/BATCH1/P1").iterdir()) == built  # the build is left as it was
    for extra in (["--aggregate-only"], ["--aggregate-only", "--overwrite"]):
        assert main(["collate", str(ws), "BATCH1", "P1", "--strict", "-q", *extra]) == 1, extra
    assert collate_plate(ws, "BATCH1", "P1").status == "skipped"


@pytest.mark.parametrize("damage", ["cut", "emptied"])
def test_a_damaged_csv_profile_is_rebuilt_not_trusted(tmp_path: Path, damage: str) -> None:
    """The per-well CSV cut or emptied after a build (its generation sidecar intact) is rebuilt on the
    next run, as a damaged SQLite or Parquet output is (before: skipped, the damaged file kept, exit 0)."""
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    first = collate_plate(ws, "BATCH1", "P1")
    profile = Path(first.outputs["profiles"])
    whole = profile.read_bytes()
    profile.write_bytes(whole[:100] if damage == "cut" else b"")
    again = collate_plate(ws, "BATCH1", "P1")
    assert again.status == "done", again.message
    assert profile.read_bytes() == whole


@pytest.mark.parametrize("flags", [["--overwrite"], ["--operation", "mean"]])
def test_a_users_own_plate_parquet_beside_the_backend_is_left_alone(tmp_path: Path, flags: list[str],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``P1_notes.parquet`` (a user's file, no generation id of ours) beside a Parquet backend survives a rebuild
    (before: removed as "left by an interrupted build", INFO only); a ``P1_*.parquet`` of ours that no report
    lists (an interrupted build's table) is still removed."""
    import pyarrow as pa

    from cytoprofile.cli import main

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    out = ws / "backend/BATCH1/P1"
    args = ["collate", str(ws), "BATCH1", "P1", "-q", "--backend", "parquet"]
    assert main(args) == 0
    pq.write_table(pa.table({"note": ["keep me"]}), out / "P1_notes.parquet")
    (out / "P1_Speckles.parquet").write_bytes((out / "P1_Cells.parquet").read_bytes())
    assert main([*args, *flags]) == 0
    assert pq.read_table(out / "P1_notes.parquet").column("note").to_pylist() == ["keep me"]
    assert not (out / "P1_Speckles.parquet").exists()


def _cut_parquet_keeping_its_id(path: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    pq.write_table(table.slice(0, max(1, table.num_rows // 3)), path)  # the key-value metadata (its id) kept


def _delete_a_well_in_place(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:  # the file keeps its size and its cytoprofile_run id
        db.execute("DELETE FROM Cells WHERE TableNumber IN (SELECT TableNumber FROM Image WHERE Metadata_Well = 'A02')")


@pytest.mark.parametrize("damage", ["parquet cut, id kept", "sqlite rows deleted in place"])
def test_a_backend_damaged_keeping_its_id_is_rebuilt(tmp_path: Path, damage: str) -> None:
    """A backend file edited after the build but still carrying the build's id was skipped as complete, and
    --aggregate-only then wrote profiles missing the deleted cells (exit 0): size and mtime are checked too."""
    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    first = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    out = ws / "backend/BATCH1/P1"
    before = (out / "P1.csv").read_bytes()
    if damage.startswith("parquet"):
        _cut_parquet_keeping_its_id(out / "P1_Cells.parquet")
    else:
        _delete_a_well_in_place(out / "P1.sqlite")
    assert first.status == "done"
    assert collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet")).status == "done"  # rebuilt, not skipped
    assert (out / "P1.csv").read_bytes() == before
    assert collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet")).status == "skipped"


def test_aggregate_only_does_not_skip_over_another_build_s_backend(tmp_path: Path) -> None:
    """Another build's P1.sqlite copied in: --aggregate-only said "profiles exist" and kept profiles of a backend
    that is no longer there (exit 0); it now refuses, naming the fix."""
    import shutil

    ws, other = tmp_path / "ws", tmp_path / "other"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    synth(other, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4, seed=7)
    collate_plate(ws, "BATCH1", "P1")
    collate_plate(other, "BATCH1", "P1")
    shutil.copy(other / "backend/BATCH1/P1/P1.sqlite", ws / "backend/BATCH1/P1/P1.sqlite")
    with pytest.raises(InputError, match="does not match P1.report.json"):
        collate_plate(ws, "BATCH1", "P1", aggregate_only=True)


@pytest.mark.parametrize("edit", [{"outputs": "x"}, {"sites": None, "input_files": 7}, {"options": []}])
def test_a_report_of_another_shape_is_no_record(tmp_path: Path, edit: dict[str, object]) -> None:
    """A report that is valid JSON with fields of other types crashed the re-run (exit 3); it is now no record
    of a build, and the plate is rebuilt."""
    import json

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    collate_plate(ws, "BATCH1", "P1")
    path = ws / "backend/BATCH1/P1/P1.report.json"
    report = json.loads(path.read_text())
    report.update(edit)
    path.write_text(json.dumps(report))
    assert collate_plate(ws, "BATCH1", "P1").status == "done"
    assert collate_plate(ws, "BATCH1", "P1").status == "skipped"


@pytest.mark.parametrize("damage", ["table removed", "table grown"])
def test_a_kept_output_of_another_kind_is_checked_too(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    """Built with both backends, re-run asking for SQLite only (the Parquet tables kept as current), then a kept
    Parquet table removed or changed: the next run was skipped as complete with the report still listing it
    (exit 0); every listed output is checked, so the plate is built again and the report lists only what is."""
    import json

    ws = tmp_path / "ws"
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=5, features=4)
    collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    assert collate_plate(ws, "BATCH1", "P1").status == "skipped"
    table = ws / "backend/BATCH1/P1/P1_Nuclei.parquet"
    if damage == "table removed":
        table.unlink()
    else:
        with open(table, "ab") as fh:
            fh.write(b"x")
    with caplog.at_level("WARNING", logger="cytoprofile"):
        again = collate_plate(ws, "BATCH1", "P1")
    assert again.status == "done", again.message
    assert "P1_Nuclei.parquet of the last build is not as built" in caplog.text
    report = json.loads((ws / "backend/BATCH1/P1/P1.report.json").read_text())
    _, trusted = trusted_outputs(ws, "BATCH1", "P1")
    assert set(report["outputs"]) == set(trusted)
    assert collate_plate(ws, "BATCH1", "P1").status == "skipped"
