"""Shared fixtures: the real CellProfiler data in ../shared/data, small synthetic workspaces, a loopback S3
server, a loopback Dask cluster and a port that never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .loopback import CREDENTIALS, aws_credentials, free_port, moto_server, wait_port

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


@pytest.fixture(scope="module")
def cluster(aws_env: None) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    port = free_port()
    env = {**os.environ, **CREDENTIALS}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        wait_port(port)
        address = f"tcp://127.0.0.1:{port}"
        for _ in range(2):
            workers.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, workers
    finally:
        for proc in [*workers, scheduler]:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.fixture()
def silent_listener() -> Iterator[str]:
    """A port that accepts connections (the kernel completes the handshake) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"127.0.0.1:{s.getsockname()[1]}"
