"""Shared fixtures: the real CellProfiler data in ../shared/data, small synthetic workspaces, a loopback S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .loopback import aws_credentials, moto_server

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests that need it skip with the reason when it is absent."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing in CI")
        pytest.skip(f"{SHARED_DATA} not found (tests read the shared data in place)")
    return SHARED_DATA


#: module fixtures that take many seconds to build (a recipe run, a cluster, a QC run): with
#: ``--dist loadgroup`` the tests using one run on one worker, so it is built once, not per worker
_BUILT_ONCE = frozenset({
    "annotated_ws", "base", "chain_workspace", "cluster", "local_reference", "qc_run", "qc_workspace", "ran",
    "recipe_ws", "small_databases", "speckled", "violations", "workspace",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each module's tests that share an expensive module fixture form one xdist group."""
    for item in items:
        if _BUILT_ONCE & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def link_sites(ws: Path, batch: str, plate: str, sites: dict[str, Path]) -> Path:
    """A handbook-layout workspace whose site folders are links to real site folders."""
    plate_dir = ws / "analysis" / batch / plate / "analysis"
    plate_dir.mkdir(parents=True, exist_ok=True)
    for name, target in sites.items():
        (plate_dir / name).symlink_to(target, target_is_directory=True)
    return plate_dir


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials for the module's tests, the environment restored afterwards."""
    with aws_credentials():
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_env: None) -> Iterator[str]:
    """A moto S3 server on a free loopback port for the module's tests; its endpoint URL."""
    with moto_server() as endpoint:
        yield endpoint
