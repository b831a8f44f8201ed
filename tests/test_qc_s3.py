"""QC on an object-storage workspace (a moto S3 server on loopback): a re-run leaves no stale figure."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cytoprofile import io, qc

from .loopback import make_bucket, upload_tree
from .qc_builders import write_workspace


@pytest.mark.parametrize("plates", [["P1", "P2"], ["P2"]])
def test_rerun_with_fewer_figures_removes_stale_ones_on_s3(s3_endpoint: str, tmp_path: Path, plates: list[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    bucket = f"qcstale{len(plates)}"
    make_bucket(s3_endpoint, bucket)
    local = tmp_path / "ws"
    write_workspace(local)  # batch-level feature-selected profiles only
    url = f"s3://{bucket}/ws"
    upload_tree(local, url)
    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    heatmaps = f"{url}/quality_control/heatmap/B1"
    qc.quality_control(url, "B1", plates, n_null=100, report=False)
    for plate in plates:
        names = {k.rsplit("/", 1)[-1] for k in io.list_files(f"{heatmaps}/{plate}")}
        assert names == {f"{plate}_{n}.png" for n in qc.FIGURE_NAMES}, names
    with caplog.at_level(logging.WARNING, logger="cytoprofile.qc"):
        qc.quality_control(url, "B1", plates, level="plate", n_null=100, report=False)  # no plate-level profiles
    for plate in plates:
        names = {k.rsplit("/", 1)[-1] for k in io.list_files(f"{heatmaps}/{plate}")}
        assert names == {f"{plate}_cell_count.png"}, names
        removed = [r.getMessage() for r in caplog.records if "of an earlier run" in r.getMessage()
                   and r.getMessage().startswith(f"{plate}: ")]
        assert sorted(removed) == sorted(f"{plate}: removed {plate}_{n}.png of an earlier run (this run cannot make it)"
                                         for n in ("correlation", "position_effect"))
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{plate}: no ")]
        assert len(said) == 1 and f"in {url}/profiles/B1/{plate};" in said[0], said  # the URL, not a scratch copy


def test_rerun_without_the_map_panel_removes_its_tables_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    from .qc_builders import MAP_SETTINGS, map_workspace

    make_bucket(s3_endpoint, "qcstalemap")
    local = tmp_path / "ws"
    plates, _ = map_workspace(local)
    url = "s3://qcstalemap/ws"
    upload_tree(local, url)
    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    folder = f"{url}/quality_control/map/B1"
    qc.quality_control(url, "B1", plates, n_null=100, heatmaps=False, report=False,
                       map_settings={**MAP_SETTINGS, "modes": ["activity"]})
    assert {k.rsplit("/", 1)[-1] for k in io.list_files(folder)} == {"B1_map_activity.csv",
                                                                     "B1_map_activity_by_plate.csv"}
    qc.quality_control(url, "B1", plates, n_null=100, heatmaps=False, report=False)
    assert not io.list_files(folder)
    io.configure_storage(None)


def test_error_of_a_url_workspace_names_the_url(s3_endpoint: str, tmp_path: Path) -> None:
    make_bucket(s3_endpoint, "qcurlerror")
    local = tmp_path / "ws"
    write_workspace(local)
    for path in (local / "load_data_csv" / "B1" / "P1").iterdir():
        path.unlink()  # P1's load_data is gone: QC refuses naming its folder
    url = "s3://qcurlerror/ws"
    upload_tree(local, url)
    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    from cytoprofile.errors import InputError

    with pytest.raises(InputError) as caught:
        qc.quality_control(url, "B1", ["P1", "P2"], n_null=100, report=False, heatmaps=False)
    io.configure_storage(None)
    message = str(caught.value)
    assert f"{url}/load_data_csv/B1/P1" in message and str(tmp_path) not in message, message
    assert "/tmp" not in message.replace(url, ""), message
