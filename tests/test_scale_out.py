"""Scale-out for real on loopback: an S3 server (moto), a flaky proxy in front of it, a Dask cluster."""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cytoprofile import io
from cytoprofile.collate import collate
from cytoprofile.config import config_template
from cytoprofile.pipeline import run
from cytoprofile.synth import synth

from .loopback import closed_port, make_bucket, upload_tree
from .quarantine import BATCH, quarantined_workspace

BATCHES = {"B1": ["P1", "P2"], "B2": ["P3"]}
class _FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards to the S3 server; answers every ``every``-th request with 503 SlowDown."""

    daemon_threads = True

    def __init__(self, target_port: int, every: int) -> None:
        self.target_port = target_port
        self.every = every
        self.count = 0
        self.failed = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self) -> None:
        server: _FlakyProxy = self.server  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with server.lock:
            server.count += 1
            fail = server.count % server.every == 0
            if fail:
                server.failed += 1
        if fail:
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection("127.0.0.1", server.target_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _make_workspace(ws: Path) -> None:
    for i, (batch, plates) in enumerate(BATCHES.items()):
        synth(ws, batch=batch, plates=plates, wells=96, well_subset=12, sites=2, cells=15, features=12, seed=i)


def _config(path: Path, workspace: str) -> Path:
    text = config_template(workspace=workspace, batch="B1", plates=BATCHES["B1"]).replace('gct: false', 'gct: true')
    text += "---\nbatch: B2\nplates:\n  - name: P3\n    process: true\nprocess: true\n"
    path.write_text(text)
    return path


def _remote_bytes(url: str) -> bytes:
    fs, bare = io.filesystem(url)
    return bytes(fs.cat_file(bare))


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("local")
    _make_workspace(ws)
    for batch, plates in BATCHES.items():
        assert all(r.status == "done" for r in collate(ws, batch, plates))
    run(_config(ws / "config.yml", "."))
    return ws


def _compare_with_local(local: Path, url: str) -> None:
    for batch, plates in BATCHES.items():
        for plate in plates:
            assert _remote_bytes(f"{url}/backend/{batch}/{plate}/{plate}.csv") == \
                (local / f"backend/{batch}/{plate}/{plate}.csv").read_bytes()


def test_s3_to_s3_on_dask_equals_local_run(s3_endpoint: str, cluster: tuple[str, list[subprocess.Popen[bytes]]],
                                           local_reference: Path, tmp_path: Path) -> None:
    address, _ = cluster
    make_bucket(s3_endpoint, "cells")
    ws = tmp_path / "ws"
    _make_workspace(ws)
    url = "s3://cells/project/workspace"
    upload_tree(ws, url)
    for batch, plates in BATCHES.items():
        results = collate(url, batch, plates, scheduler=address)
        assert [r.status for r in results] == ["done"] * len(plates), [r.message for r in results]
    _compare_with_local(local_reference, url)
    # the recipe from S3 to S3, per-plate steps on the workers
    result = run(_config(tmp_path / "config.yml", url), scheduler=address)
    assert result.outputs
    for batch, plates in BATCHES.items():
        for plate in plates:
            for stem in ("_augmented", "_normalized", "_normalized_negcon", "_normalized_feature_select_batch",
                         "_normalized_feature_select_negcon_batch"):
                name = f"profiles/{batch}/{plate}/{plate}{stem}.csv.gz"
                assert _remote_bytes(f"{url}/{name}") == (local_reference / name).read_bytes(), name
        gct = f"gct/{batch}/{batch}_normalized_feature_select_batch.gct"
        assert _remote_bytes(f"{url}/{gct}") == (local_reference / gct).read_bytes()
    assert _remote_bytes(f"{url}/quality_control/report/B1.html").startswith(b"<!DOCTYPE html>")
    # qc alone, straight on the bucket
    from cytoprofile.cli import main

    assert main(["qc", url, "B2", "P3", "--endpoint-url", s3_endpoint, "-q"]) == 0
    assert b"P3" in _remote_bytes(f"{url}/quality_control/report/B2.html")
    io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
    # a second run finds every step current
    again = run(_config(tmp_path / "config.yml", url), scheduler=address)
    assert not [r for r in again.ran if not r.startswith("quality_control")]


def test_killed_worker_does_not_change_the_result(s3_endpoint: str, cluster: tuple[str, list[subprocess.Popen[bytes]]],
                                                  tmp_path: Path) -> None:
    address, workers = cluster
    plates = ["K1", "K2", "K3", "K4"]
    local = tmp_path / "local"
    args = dict(batch="BK", plates=plates, wells=96, well_subset=24, sites=3, cells=80, features=60, seed=9)
    synth(local, **args)  # type: ignore[arg-type]
    shared = tmp_path / "shared"
    shutil.copytree(local, shared)
    collate(local, "BK", plates)
    def kill_after_first(plate: str, done: int, total: int) -> None:
        # the first finished plate leaves three to go: one worker dies while they run
        if done == total and workers[0].poll() is None:
            workers[0].send_signal(signal.SIGKILL)

    results = collate(shared, "BK", plates, scheduler=address, progress=kill_after_first)
    # a plate whose result died with the worker is run again; finding its outputs complete, it is skipped
    assert all(r.status in ("done", "skipped") for r in results), [(r.plate, r.status, r.message) for r in results]
    assert workers[0].poll() is not None, "the worker was meant to be killed during the run"
    for plate in plates:
        out = shared / f"backend/BK/{plate}"
        assert (out / f"{plate}.csv").read_bytes() == (local / f"backend/BK/{plate}/{plate}.csv").read_bytes()
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_flaky_s3_retries_and_leaves_nothing_partial(s3_endpoint: str, local_reference: Path, tmp_path: Path) -> None:
    proxy = _FlakyProxy(int(s3_endpoint.rsplit(":", 1)[1]), every=5)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        make_bucket(s3_endpoint, "flaky")
        ws = tmp_path / "ws"
        _make_workspace(ws)
        url = "s3://flaky/ws"
        upload_tree(ws, url)
        endpoint = f"http://127.0.0.1:{proxy.server_address[1]}"
        io.configure_storage(io.storage_options(endpoint_url=endpoint) | {"use_listings_cache": False})
        results = collate(url, "B1", BATCHES["B1"], tmp_dir=str(tmp_path))
        assert [r.status for r in results] == ["done", "done"], [r.message for r in results]
        assert proxy.failed > 0
        io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
        for plate in BATCHES["B1"]:
            assert _remote_bytes(f"{url}/backend/B1/{plate}/{plate}.csv") == \
                (local_reference / f"backend/B1/{plate}/{plate}.csv").read_bytes()
        keys = io.list_files(f"{url}/backend")
        assert keys and not [k for k in keys if k.endswith(".tmp")]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("cytoprofile-")], "scratch not cleaned"
    finally:
        proxy.shutdown()


@pytest.fixture()
def web_server() -> Iterator[str]:
    """A service that is not the one asked for: a tiny HTTP server."""
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


FAST = ["--connect-timeout", "1", "--read-timeout", "1", "--retries", "1", "-q"]


def _fails_fast(argv: list[str], capsys: pytest.CaptureFixture[str], names: str, fix: str) -> None:
    from cytoprofile.cli import main

    t0 = time.monotonic()
    assert main(argv) == 1
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert elapsed < 30, elapsed
    assert len(err.splitlines()) == 1 and "internal error" not in err, err
    assert names in err and fix in err, err


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_s3_endpoint_that_never_answers_fails_within_seconds(kind: str, silent_listener: str, aws_env: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    address = silent_listener if kind == "silent" else closed_port()
    endpoint = f"http://{address}"
    _fails_fast(["collate", "s3://cells/ws", "B1", "P1", "--endpoint-url", endpoint, *FAST], capsys, endpoint,
                "--endpoint-url")
    io.configure_storage(None)


@pytest.mark.parametrize("kind", ["web", "silent", "closed"])
def test_scheduler_that_is_no_dask_scheduler_fails_within_seconds(tmp_path: Path, kind: str, web_server: str,
                                                                  silent_listener: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1", "P2"], wells=96, well_subset=2, sites=1, cells=4, features=4)
    address = "tcp://" + {"web": web_server, "silent": silent_listener, "closed": closed_port()}[kind]
    _fails_fast(["collate", str(ws), "B1", "P1", "P2", "--scheduler", address, *FAST], capsys, address, "--scheduler")
    assert not (ws / "backend").exists()


def _s3_plate(tmp_path: Path, s3_endpoint: str, bucket: str) -> tuple[Path, str]:
    make_bucket(s3_endpoint, bucket)
    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=4, sites=2, cells=8, features=6, seed=4)
    url = f"s3://{bucket}/ws"
    upload_tree(ws, url, under="analysis")
    return ws, url


def _names(url: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[-1] for k in io.list_files(url))


def test_s3_reruns_follow_the_local_rules(s3_endpoint: str, tmp_path: Path) -> None:
    import pandas as pd

    from cytoprofile.collate import collate_plate, trusted_outputs

    ws, url = _s3_plate(tmp_path, s3_endpoint, "reruns")
    backend = f"{url}/backend/B1/P1"
    scratch = tmp_path / "not" / "yet"  # --tmp-dir that does not exist is created
    assert [r.status for r in collate(url, "B1", ["P1"], tmp_dir=str(scratch))] == ["done"]
    assert scratch.is_dir() and not list(scratch.iterdir())
    assert collate(url, "B1", ["P1"], tmp_dir=str(scratch))[0].status == "skipped"
    # changed options rebuild, as locally
    mean = collate(url, "B1", ["P1"], operation="mean", tmp_dir=str(scratch))[0]
    assert mean.status == "done", mean.message
    local = collate_plate(ws, "B1", "P1", operation="mean")
    assert _remote_bytes(f"{backend}/P1.csv") == Path(local.outputs["profiles"]).read_bytes()
    # switching the profile format removes the old PLATE.csv key; the backend still current is kept
    parquet = collate(url, "B1", ["P1"], operation="mean", profile_format="parquet", tmp_dir=str(scratch))[0]
    assert parquet.status == "done", parquet.message
    names = _names(backend)
    assert "P1.csv" not in names and "P1.csv.generation" not in names and "P1.parquet" in names and "P1.sqlite" in names
    report, trusted = trusted_outputs(url, "B1", "P1")
    assert report is not None and set(trusted) == set(report["outputs"]) == {"P1.sqlite", "P1.parquet"}
    fs, bare = io.filesystem(f"{backend}/P1.parquet")
    with fs.open(bare, "rb") as fh:
        remote = pd.read_parquet(fh)
    pd.testing.assert_frame_equal(remote, io.read_table(local.outputs["profiles"]))


_KILL_UPLOAD = """
import os, signal, sys
from cytoprofile import remote
n = int(sys.argv[1]); calls = [0]
real = remote.with_retries
def killing(action, what, *args, **kwargs):
    if what.startswith("upload of"):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(action, what, *args, **kwargs)
remote.with_retries = killing
from cytoprofile.cli import main
code = main(sys.argv[2:])
print("calls", calls[0], flush=True)
sys.exit(code)
"""


def test_s3_kill_during_upload_is_never_skipped_and_leftovers_are_cleaned(s3_endpoint: str, tmp_path: Path) -> None:
    from cytoprofile.collate import collate_plate, trusted_outputs

    ws, url = _s3_plate(tmp_path, s3_endpoint, "killed")
    backend = f"{url}/backend/B1/P1"
    scratch = tmp_path / "scratch"
    expected = Path(collate_plate(ws, "B1", "P1", operation="mean").outputs["profiles"]).read_bytes()
    median = Path(collate_plate(ws, "B1", "P1", overwrite=True).outputs["profiles"]).read_bytes()
    argv = ["collate", url, "B1", "P1", "--endpoint-url", s3_endpoint, "--tmp-dir", str(scratch), "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

    def attempt(moment: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _KILL_UPLOAD, str(moment), *argv, *extra], env=env, text=True,
                              capture_output=True, timeout=300)

    first = attempt(0)
    assert first.returncode == 0, first.stderr
    calls = int(first.stdout.split()[-1])  # two per file (temporary key, then the copy), the report last
    current = {"median": median, "mean": expected}
    for i, moment in enumerate(sorted({2, calls // 2, calls - 1})):
        new = ["mean", "median"][i % 2]
        old = "median" if new == "mean" else "mean"
        killed = attempt(moment, "--operation", new)
        assert killed.returncode == -signal.SIGKILL, (moment, killed.stderr)
        io.configure_storage(io.storage_options(endpoint_url=s3_endpoint) | {"use_listings_cache": False})
        report, trusted = trusted_outputs(url, "B1", "P1")
        assert report is None or set(trusted) == set(report["outputs"]), moment
        if report is not None and "P1.csv" in trusted:  # what a reader trusts is one whole build
            assert _remote_bytes(f"{backend}/P1.csv") == current[report["options"]["operation"]], moment
        assert list(scratch.iterdir()), "the killed run's scratch folder is there to be cleaned"
        again = attempt(0, "--operation", new)
        assert again.returncode == 0 and "skipped" not in again.stderr, again.stderr
        assert _remote_bytes(f"{backend}/P1.csv") == current[new] != current[old], moment
        assert not [k for k in io.list_files(url) if k.endswith(".tmp")], moment
        assert not list(scratch.iterdir()), moment


def test_push_to_remote_follows_the_same_rules(s3_endpoint: str, tmp_path: Path) -> None:
    from cytoprofile.collate import trusted_outputs

    make_bucket(s3_endpoint, "pushed")
    ws = tmp_path / "ws"
    synth(ws, batch="B1", plates=["P1"], wells=96, well_subset=2, sites=1, cells=5, features=4)
    url = "s3://pushed/ws"
    backend = f"{url}/backend/B1/P1"
    assert collate(ws, "B1", ["P1"], remote=url)[0].status == "done"
    assert _remote_bytes(f"{backend}/P1.csv") == (ws / "backend/B1/P1/P1.csv").read_bytes()
    assert collate(ws, "B1", ["P1"], remote=url, profile_format="parquet")[0].status == "done"
    names = _names(backend)
    assert "P1.csv" not in names and {"P1.parquet", "P1.sqlite", "P1.report.json"} <= set(names)
    report, trusted = trusted_outputs(url, "B1", "P1")
    assert report is not None and set(trusted) == set(report["outputs"]) == {"P1.parquet", "P1.sqlite"}


PLATES = ["P1", "P2", "P3"]


def _plate_lines(err: str, plate: str) -> list[str]:
    """A plate's log lines, timings masked, in the order printed."""
    import re

    return [re.sub(r"\d+\.\d+s", "Ts", line) for line in err.splitlines() if line.split(maxsplit=1)[-1].startswith(f"{plate}: ")]


def _collate_cli(ws: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    from cytoprofile.cli import main

    assert main(["collate", str(ws), BATCH, *PLATES, "--overwrite", *extra]) == 0
    return capsys.readouterr().err


@pytest.fixture
def quarantined(tmp_path: Path) -> tuple[Path, list[str]]:
    return tmp_path / "ws", quarantined_workspace(tmp_path / "ws", PLATES)


def _assert_each_once(err: str, expected: list[str]) -> None:
    lines = err.splitlines()
    for warning in expected:
        assert lines.count(f"WARNING  {warning}") == 1, (warning, err)
    assert sum(line.startswith("WARNING") and "quarantined" in line for line in lines) == len(expected), err


@pytest.mark.parametrize("extra", [("--jobs", "2"), ("--jobs", "3")])
def test_pool_workers_records_print_once_in_plate_order(quarantined: tuple[Path, list[str]], extra: tuple[str, ...],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ws, expected = quarantined
    _collate_cli(ws, capsys)  # the runs compared below both replace an earlier build
    serial = _collate_cli(ws, capsys)
    parallel = _collate_cli(ws, capsys, *extra)
    _assert_each_once(parallel, expected)
    for plate in PLATES:  # the worker's INFO lines too, each plate's in the order it wrote them
        assert _plate_lines(parallel, plate) == _plate_lines(serial, plate)
        assert any("scanned 12 sites" in line for line in _plate_lines(parallel, plate))


def test_quiet_pool_keeps_every_dropped_data_warning(quarantined: tuple[Path, list[str]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ws, expected = quarantined
    err = _collate_cli(ws, capsys, "--jobs", "2", "--quiet")
    _assert_each_once(err, expected)
    assert sorted(err.splitlines()) == sorted(f"WARNING  {w}" for w in expected), err  # no bars, no INFO


@pytest.mark.parametrize("quiet", [False, True])
def test_dask_workers_records_reach_the_client_once(quarantined: tuple[Path, list[str]], quiet: bool,
                                                    cluster: tuple[str, list[subprocess.Popen[bytes]]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ws, expected = quarantined
    _collate_cli(ws, capsys)
    serial = _collate_cli(ws, capsys)
    err = _collate_cli(ws, capsys, "--scheduler", cluster[0], *(["--quiet"] if quiet else []))
    _assert_each_once(err, expected)
    for plate in PLATES:
        if quiet:
            assert [x for x in _plate_lines(err, plate) if not x.startswith("WARNING")] == []
        else:
            assert _plate_lines(err, plate) == _plate_lines(serial, plate)


def test_plate_tasks_are_named_picklable_records(tmp_path: Path) -> None:
    """A task travels to a process or a Dask worker as a frozen record; its plate names it."""
    import dataclasses
    import pickle

    from cytoprofile.config import parse_config
    from cytoprofile.executor import PlateTask, run_plates
    from cytoprofile.layout import Layout
    from cytoprofile.recipe.remote import RecipeTask

    recipe = parse_config(config_template(batch="B1", plates=["P1"], workspace=str(tmp_path)))
    task = RecipeTask(Layout(root=str(tmp_path), workspace=str(tmp_path)), recipe, "B1", "P1", force=True)
    back = pickle.loads(pickle.dumps(task))
    assert (back.batch, back.plate, back.force, back.tmp_dir) == ("B1", "P1", True, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.plate = "P2"  # type: ignore[misc]
    seen: list[tuple[str, str]] = []
    got = run_plates(lambda t, options, progress: (t.batch, t.plate, options["x"]),
                     [PlateTask(str(tmp_path), "B1", p) for p in ("P1", "P2")], {"x": 1},
                     on_done=lambda i, r: seen.append(r[:2]))
    assert got == [("B1", "P1", 1), ("B1", "P2", 1)] and seen == [("B1", "P1"), ("B1", "P2")]
