"""Object storage for every module: the options remote filesystems open with, their timeouts,
listing, fetching and publishing files with retries, and the one error for a store that does
not answer. Local paths go through the same calls, so callers need not tell the two apart.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec

from .errors import RemoteError

__all__ = [
    "list_entries",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_RETRIES",
    "check_reachable",
    "configure_storage",
    "current_storage",
    "download",
    "endpoint",
    "exists",
    "filesystem",
    "is_leftover",
    "is_remote",
    "join",
    "list_files",
    "list_etags",
    "list_sizes",
    "network_failure",
    "remove",
    "remove_leftovers",
    "storage_options",
    "unreachable",
    "upload",
    "with_retries",
]


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for URLs such as ``s3://bucket/key`` (anything with a protocol but ``file``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


_STORAGE: dict[str, Any] = {}

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 15.0
DEFAULT_RETRIES = 2


def storage_options(
    *,
    profile: str | None = None,
    endpoint_url: str | None = None,
    no_sign_request: bool = False,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """fsspec/s3fs options from the CLI's ``--profile``, ``--endpoint-url``, ``--no-sign-request``.

    Every request has a connect and a read timeout (seconds) and at most ``retries``
    retries, so an endpoint that never answers fails in bounded time instead of hanging.
    Credentials otherwise come from the standard AWS chain (environment, config files, roles).
    """
    if connect_timeout <= 0 or read_timeout <= 0 or retries < 0:
        from .errors import ConfigError

        raise ConfigError(f"timeouts must be > 0 and retries >= 0 (got connect {connect_timeout}, "
                          f"read {read_timeout}, retries {retries})")
    options: dict[str, Any] = {}
    if profile:
        options["profile"] = profile
    if endpoint_url:
        options["client_kwargs"] = {"endpoint_url": endpoint_url}
    if no_sign_request:
        options["anon"] = True
    options["config_kwargs"] = {"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                                "retries": {"max_attempts": retries, "mode": "standard"}}
    return options


def endpoint() -> str:
    """The object store's address requests go to (for messages)."""
    url = (_STORAGE.get("client_kwargs") or {}).get("endpoint_url")
    return str(url) if url else "the default AWS S3 endpoint"


_NETWORK_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                   "ClientConnectorError", "ServerTimeoutError", "ServerDisconnectedError", "TimeoutError",
                   "FSTimeoutError", "ConnectionRefusedError", "ConnectionResetError")


def network_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) says the endpoint could not be reached or did not answer."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if type(current).__name__ in _NETWORK_ERRORS:
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def unreachable(what: str, exc: BaseException) -> RemoteError:
    """The error for a store that did not answer: what was tried, the endpoint and the timeouts."""
    timeouts = _STORAGE.get("config_kwargs") or {}
    return RemoteError(
        f"{what}: no answer from {endpoint()} ({type(exc).__name__}; connect timeout "
        f"{timeouts.get('connect_timeout', DEFAULT_CONNECT_TIMEOUT):g}s, read timeout "
        f"{timeouts.get('read_timeout', DEFAULT_READ_TIMEOUT):g}s); check --endpoint-url and the network, "
        "or raise --read-timeout for a slow store"
    )

def list_entries(url: str, *, refresh: bool = False) -> list[dict[str, Any]]:
    """The entries (``name``, ``type``, ``size``) directly under a URL; none when it does not
    exist. A network failure is one error naming the URL and the fix."""
    fs, bare = filesystem(url)
    try:
        return list(fs.ls(bare, detail=True, refresh=refresh))
    except FileNotFoundError:
        return []
    except Exception as exc:
        if network_failure(exc):
            raise unreachable(f"listing {url}", exc) from exc
        raise



def current_storage() -> dict[str, Any]:
    """The options remote filesystems are opened with (to hand to worker processes)."""
    return dict(_STORAGE)


def configure_storage(options: dict[str, Any] | None) -> None:
    """Set the options every remote filesystem of this process is opened with."""
    _STORAGE.clear()
    if options:
        _STORAGE.update(options)


def filesystem(path: str | os.PathLike[str]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and the bare path for ``path``."""
    text = str(path)
    protocol = text.split("://", 1)[0] if "://" in text else "file"
    fs, bare = fsspec.core.url_to_fs(text, **(_STORAGE if protocol in ("s3", "s3a") else {}))
    if protocol in ("s3", "s3a"):
        fs.retries = 1  # botocore retries with the configured bound; s3fs's own loop would multiply the wait
    return fs, bare


def check_reachable(url: str | os.PathLike[str]) -> None:
    """One request without retries to the store behind ``url``: an endpoint that does not answer
    fails here, after one read timeout, instead of after every retry of every later request."""
    text = str(url)
    if not is_remote(text) or not text.startswith(("s3://", "s3a://")):
        return
    options = dict(_STORAGE)
    options["config_kwargs"] = {**(options.get("config_kwargs") or {}), "retries": {"max_attempts": 0, "mode": "standard"}}
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    fs.retries = 1
    try:
        fs.ls(text.split("://", 1)[1].rstrip("/"), refresh=True)
    except Exception as exc:  # noqa: BLE001 - only a dead endpoint is reported here; the rest by the real call
        if network_failure(exc):
            raise unreachable(f"reaching {text}", exc) from exc


def _url(path: str, like: str) -> str:
    """Give a bare key the protocol of ``like``."""
    return path if "://" in path else like.split("://", 1)[0] + "://" + path


def list_files(prefix: str | os.PathLike[str]) -> list[str]:
    """Every file under ``prefix`` (one listing call on object storage), as full URLs or paths."""
    text = str(prefix)
    if not is_remote(text):
        return sorted(str(p) for p in Path(text).rglob("*") if p.is_file())
    fs, bare = filesystem(text)
    try:
        found = fs.find(bare)
    except FileNotFoundError:
        return []
    except Exception as exc:
        if network_failure(exc):
            raise unreachable(f"listing {text}", exc) from exc
        raise RemoteError(f"{text}: cannot list ({exc}); check the address and credentials") from exc
    return sorted(_url(f, text) for f in found)


def _found(prefix: str) -> dict[str, dict[str, Any]]:
    """The listing of every file under an object-storage ``prefix`` (one call): URL -> the store's details."""
    fs, bare = filesystem(prefix)
    try:
        found = fs.find(bare, detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:
        if network_failure(exc):
            raise unreachable(f"listing {prefix}", exc) from exc
        raise RemoteError(f"{prefix}: cannot list ({exc}); check the address and credentials") from exc
    return {_url(key, prefix): entry for key, entry in sorted(found.items()) if entry.get("type", "file") == "file"}


def list_etags(prefix: str) -> dict[str, tuple[int, str]]:
    """Every file under an object-storage ``prefix`` with its size and ETag (one listing call): a file's content
    changes its ETag, so the pair stands for the content without reading it."""
    return {url: (int(entry.get("size") or 0), str(entry.get("ETag") or entry.get("etag") or "").strip('"'))
            for url, entry in _found(prefix).items()}


def list_sizes(prefix: str | os.PathLike[str]) -> dict[str, int]:
    """Every file under ``prefix`` with its size in bytes (one listing call on object storage)."""
    text = str(prefix)
    if not is_remote(text):
        return {path: os.path.getsize(path) for path in list_files(text)}
    return {url: int(entry.get("size") or 0) for url, entry in _found(text).items()}


def with_retries(action: Any, what: str, *, attempts: int = 4) -> Any:
    """Retry errors the store's client does not (a copy racing a write); never a dead endpoint."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except FileNotFoundError:
            raise
        except Exception as exc:
            if network_failure(exc):  # the client already retried with its timeouts
                raise unreachable(what, exc) from exc
            if attempt == attempts:
                raise RemoteError(f"{what} failed after {attempts} attempts ({exc}); check the address and "
                                  "credentials, then re-run") from exc
            import time

            time.sleep(delay)
            delay *= 2
    return None  # pragma: no cover


def download(urls: list[str], local_paths: list[str], *, threads: int = 8) -> None:
    """Fetch ``urls`` to ``local_paths`` in parallel, each with retries."""
    from concurrent.futures import ThreadPoolExecutor

    if not urls:
        return
    fs, _ = filesystem(urls[0])

    def _one(pair: tuple[str, str]) -> None:
        url, local = pair
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        bare = filesystem(url)[1]
        tmp = f"{local}.{uuid.uuid4().hex[:8]}.part"
        try:
            with_retries(lambda: fs.get_file(bare, tmp), f"download of {url}")
            os.replace(tmp, local)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(_one, zip(urls, local_paths)))


def upload(local: str | os.PathLike[str], target: str) -> None:
    """Put a local file at ``target`` atomically (temporary key, then copy), with retries."""
    _upload_atomically(str(local), target)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts for a local path or a URL alike."""
    text = str(base)
    if is_remote(text):
        return "/".join([text.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(text, *parts))


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file or folder exists, local or remote."""
    if not is_remote(path):
        return Path(path).exists()
    fs, bare = filesystem(path)
    try:
        return bool(with_retries(lambda: fs.exists(bare), f"checking {path}", attempts=2))
    except RemoteError:
        raise
    except Exception as exc:  # pragma: no cover - network failures surface as RemoteError above
        raise RemoteError(f"{path}: cannot reach the object store ({exc}); check --endpoint-url and credentials") from exc


def _upload_atomically(local: str, target: str) -> None:
    fs, bare = filesystem(target)
    head, _, name = bare.rpartition("/")
    tmp_key = f"{head}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with_retries(lambda: fs.put_file(local, tmp_key), f"upload of {target}")
        with_retries(lambda: fs.copy(tmp_key, bare), f"upload of {target}")
    finally:
        with contextlib.suppress(Exception):
            fs.rm_file(tmp_key)


def remove(path: str | os.PathLike[str]) -> bool:
    """Delete one file or key if it exists; True if something was deleted."""
    if not is_remote(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
    fs, bare = filesystem(path)
    try:
        with_retries(lambda: fs.rm_file(bare), f"deleting {path}", attempts=2)
    except FileNotFoundError:
        return False
    return True


_LEFTOVER = re.compile(r"(^|/)\.[^/]+\.tmp(/|$)|\.[0-9a-f]{8}\.tmp$")


def is_leftover(path: str) -> bool:
    """True for the temporary names this package writes before a rename (``.NAME.XXXX.tmp``, also as a folder)."""
    return bool(_LEFTOVER.search(str(path).replace(os.sep, "/")))


def remove_leftovers(prefix: str | os.PathLike[str]) -> list[str]:
    """Delete temporary files, folders and keys a killed run left under ``prefix``; return what went.

    Only for a folder no other run is writing to at the same time (collate holds the plate's lock).
    """
    import shutil

    text = str(prefix)
    removed: list[str] = []
    if is_remote(text):
        for url in list_files(text):
            rel = url[len(text.rstrip("/")) + 1 :]
            if is_leftover(rel) and remove(url):
                removed.append(url)
        return removed
    root = Path(text)
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(".*.tmp"), key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a leftover folder already removed
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(str(path))
    return removed
