"""Ingest invariants: order independence, row conservation, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cytoprofile import io
from cytoprofile.collate import collate_plate
from cytoprofile.ingest import discover_sites, order_by_key, plan_schema, scan_sites
from cytoprofile.synth import synth

COMPARTMENTS = ("Cells", "Cytoplasm", "Nuclei")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    ws = tmp_path_factory.mktemp("base")
    synth(ws, plates=["P1"], wells=96, well_subset=3, sites=2, cells=6, features=6, seed=11)
    result = collate_plate(ws, "BATCH1", "P1")
    return ws, io.read_table(result.outputs["profiles"])


def _copy_with_column_order(src: Path, dest: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for site in sorted((src / "analysis/BATCH1/P1/analysis").iterdir()):
        out = dest / "analysis/BATCH1/P1/analysis" / site.name
        out.mkdir(parents=True)
        for csv in site.iterdir():
            df = pd.read_csv(csv)
            df[list(rng.permutation(df.columns))].to_csv(out / csv.name, index=False)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_csv_column_order_changes_nothing(base: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    ws, expected = base
    shuffled = tmp_path_factory.mktemp("shuffled")
    _copy_with_column_order(ws, shuffled, seed)
    result = collate_plate(shuffled, "BATCH1", "P1")
    got = io.read_table(result.outputs["profiles"])
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)
    # the Image rows differ only by file bytes (TableNumber); object rows are conserved
    for table in COMPARTMENTS:
        assert result.report["tables"][table]["rows_in"] == result.report["tables"][table]["rows_out"]  # type: ignore[index]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)))
def test_site_order_changes_nothing(base: tuple[Path, pd.DataFrame], order: list[int]) -> None:
    ws, _ = base
    sites = discover_sites(ws / "analysis/BATCH1/P1/analysis")
    shuffled = [sites[i] for i in order]
    strata = ("Metadata_Plate", "Metadata_Well")
    a = scan_sites(sites, plate="P1", strata=strata)
    b = scan_sites(shuffled, plate="P1", strata=strata)
    assert plan_schema(a, plate="P1", strata=strata) == plan_schema(b, plate="P1", strata=strata)
    assert [s.name for s in order_by_key(a)] == [s.name for s in order_by_key(b)]


@given(cells=st.lists(st.integers(0, 7), min_size=4, max_size=4))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rows_are_conserved(tmp_path_factory: pytest.TempPathFactory, cells: list[int]) -> None:
    ws = tmp_path_factory.mktemp("rows")
    synth(ws, plates=["P1"], wells=96, well_subset=2, sites=2, cells=3, features=4, seed=2)
    sites = sorted((ws / "analysis/BATCH1/P1/analysis").iterdir())
    for site, n in zip(sites, cells):  # rewrite each site with exactly n cells
        for c in COMPARTMENTS:
            df = pd.read_csv(site / f"{c}.csv")
            df = pd.concat([df.head(1)] * n, ignore_index=True) if n and len(df) else df.head(0)
            df["ObjectNumber"] = range(1, len(df) + 1)
            df.to_csv(site / f"{c}.csv", index=False)
    result = collate_plate(ws, "BATCH1", "P1", backend=("sqlite", "parquet"))
    conn = sqlite3.connect(result.outputs["sqlite"])
    for c in COMPARTMENTS:
        assert conn.execute(f"SELECT COUNT(*) FROM {c}").fetchone()[0] == sum(cells)
    conn.close()
    profiles = io.read_table(result.outputs["profiles"])
    assert profiles["Metadata_Object_Count"].sum() == sum(cells)
    assert profiles["Metadata_Site_Count"].tolist() == [2, 2]


def _tables(sqlite: Path) -> dict[str, pd.DataFrame]:
    conn = sqlite3.connect(sqlite)
    # cytoprofile_run holds the build's generation id: different on every build by design
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0] != "cytoprofile_run"]
    out = {n: pd.read_sql(f"SELECT * FROM {n}", conn).sort_values(["TableNumber", "ImageNumber"] + (["ObjectNumber"] if n != "Image" else [])).reset_index(drop=True) for n in names}
    conn.close()
    return out


@pytest.mark.parametrize("delay", [0.3, 0.9, 1.6])
def test_killed_run_then_rerun_equals_uninterrupted(tmp_path: Path, delay: float) -> None:
    args = dict(plates=["P1"], wells=96, well_subset=24, sites=3, cells=60, features=60, seed=5)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    synth(clean, **args)  # type: ignore[arg-type]
    synth(killed, **args)  # type: ignore[arg-type]
    reference = collate_plate(clean, "BATCH1", "P1", backend=("sqlite", "parquet"))
    cmd = [sys.executable, "-m", "cytoprofile", "collate", str(killed), "BATCH1", "P1", "--backend", "sqlite",
           "--backend", "parquet", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    out = killed / "backend/BATCH1/P1"
    finals = [p.name for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
    # nothing half-written under a final name: either no report (unfinished) or everything
    if "P1.report.json" not in finals:
        for name in finals:
            assert name in {"P1.sqlite", "P1.csv", "P1.csv.generation", "P1_Image.parquet", "P1_Cells.parquet",
                            "P1_Cytoplasm.parquet", "P1_Nuclei.parquet"}
    assert subprocess.run(cmd, check=False).returncode == 0
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert (out / "P1.csv").read_bytes() == Path(reference.outputs["profiles"]).read_bytes()
    ours, ref = _tables(out / "P1.sqlite"), _tables(Path(reference.outputs["sqlite"]))
    assert ours.keys() == ref.keys()
    for name in ref:
        pd.testing.assert_frame_equal(ours[name], ref[name])
