"""Services on loopback for the object-storage and cluster tests: free ports, a moto S3 server, buckets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cytoprofile import io

__all__ = ["CREDENTIALS", "aws_credentials", "closed_port", "free_port", "make_bucket", "moto_server", "upload_tree", "wait_port"]

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A port nothing listens on now (bound and released), so parallel workers never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once something listens on ``127.0.0.1:port``; raise after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def aws_credentials() -> Iterator[None]:
    """Dummy AWS credentials in the environment, the earlier values restored on exit."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, yielding its endpoint URL; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def make_bucket(endpoint: str, name: str | None = None) -> str:
    """Point cytoprofile's storage at ``endpoint`` and create bucket ``name`` (a fresh unique one by default)."""
    io.configure_storage(io.storage_options(endpoint_url=endpoint) | {"use_listings_cache": False})
    name = name or f"ws-{uuid.uuid4().hex[:12]}"
    fs, _ = io.filesystem(f"s3://{name}")
    if not fs.exists(name):
        fs.mkdir(name)
    return name


def upload_tree(local: Path, url: str, *, under: str = "", skip: str | None = None) -> None:
    """Upload the files below ``local/under`` to the same relative keys below ``url``.

    ``skip`` leaves out every file with a folder of that name on its relative path.
    """
    for path in sorted((local / under).rglob("*")):
        relative = path.relative_to(local)
        if path.is_file() and (skip is None or skip not in relative.parts):
            io.upload(path, io.join(url, relative.as_posix()))


def closed_port() -> str:
    """A loopback address nothing listens on (bound and released): connections are refused."""
    return f"127.0.0.1:{free_port()}"
