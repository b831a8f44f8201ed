"""Where plate tasks run: in this process, a local process pool, or a Dask cluster.

A task is a small frozen record naming its plate (``PlateTask``, or a step's own with a
``plate`` field) handed to a plain function ``fn(task, options, progress)`` that returns a
picklable result; the executor only decides where it runs and relays progress events.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing
import multiprocessing.managers
import os
import queue
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .errors import CytoprofileError, InputError
from .logs import LOGGER, forward_records, prepared, replay

__all__ = ["PlateTask", "Task", "check_jobs", "check_scheduler", "run_plates"]

log = logging.getLogger("cytoprofile.executor")
R = TypeVar("R")
Progress = Callable[[str, int, int], None]


class Task(Protocol):
    """What the executor needs of a task: the plate that names it in progress events and Dask keys."""

    @property
    def plate(self) -> str: ...


T = TypeVar("T", bound=Task)


@dataclass(frozen=True)
class PlateTask:
    """One handbook plate: the workspace (a folder or URL), its batch and the plate's name."""

    workspace: str
    batch: str
    plate: str


class _QueueProgress:
    """A picklable progress callback that forwards events to the parent through a queue."""

    def __init__(self, q: Any) -> None:
        self.q = q

    def __call__(self, plate: str, done: int, total: int) -> None:
        self.q.put(("progress", plate, done, total))


def check_jobs(jobs: object) -> int:
    """``jobs`` if it is a whole number of plates at a time, at least 1; else an ``InputError``."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"jobs must be a whole number of plates at a time, at least 1 (--jobs), got {jobs!r}")
    return jobs


def run_plates(
    fn: Callable[[T, dict[str, Any], Progress | None], R],
    tasks: Sequence[T],
    options: dict[str, Any],
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    scheduler_timeout: float | None = None,
    progress: Progress | None = None,
    on_done: Callable[[int, R], None] | None = None,
) -> list[R]:
    """Run ``fn(task, options, progress)`` for every task; results in task order.

    Log records of worker processes and Dask workers are printed here, through this
    process's handlers, in the order each task wrote them; ``on_done(i, result)`` is
    called here as task ``i`` finishes, after its records. ``scheduler_timeout`` bounds
    the wait for a Dask scheduler's first answer (default: the storage connect + read
    timeouts, 20 s); the connection itself is bounded by the connect timeout.
    """
    check_jobs(jobs)
    if scheduler:
        connect, read = _default_timeouts()
        return _run_dask(fn, tasks, options, scheduler=scheduler, progress=progress, on_done=on_done,
                         timeout=scheduler_timeout if scheduler_timeout is not None else connect + read,
                         connect_timeout=connect)
    if jobs <= 1 or len(tasks) <= 1:
        results: list[R] = []
        for i, task in enumerate(tasks):
            results.append(fn(task, options, progress))
            if on_done is not None:
                on_done(i, results[-1])
        return results
    return _run_pool(fn, tasks, options, jobs=jobs, progress=progress, on_done=on_done)


_DONE = ("end",)


def _init_worker(q: Any, level: int) -> None:
    """Pool initializer: this worker's ``cytoprofile`` records go to the parent's queue.

    Ctrl-C reaches every process of the terminal's group; a worker ignores it (no
    traceback of its own): the parent cancels what has not started and ends the workers.
    """
    _ignore_interrupts()
    forward_records(logging.handlers.QueueHandler(q), level)


def _ignore_interrupts() -> None:
    """Ignore SIGINT in a helper process (the pool's workers, the queue's manager)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """After an interrupt: no task starts any more, and the running ones end now (their
    outputs are written to temporary names, so a killed task leaves nothing half-written)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in workers:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def _end_pool(pool: ProcessPoolExecutor, exc: BaseException) -> None:
    """After a task raised. A plate's user error lets the other plates run to their end (their outputs stay
    good for the re-run); an interrupt, a bug, or an interrupt while waiting for them stops the pool now."""
    if not isinstance(exc, CytoprofileError):
        _stop_pool(pool)
        return
    try:
        pool.shutdown(wait=True)
    except BaseException:
        _stop_pool(pool)
        raise


def _relay(q: Any, stop: threading.Event, handle: Callable[[Any], None]) -> None:
    """Hand every queued item to ``handle`` until the end marker (or the queue is gone)."""
    while True:
        try:
            item = q.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                return
            continue
        except (EOFError, OSError):  # the manager is gone (interrupted run)
            return
        if item == _DONE:
            return
        handle(item)


def _run_pool(fn: Callable[[T, dict[str, Any], Progress | None], R], tasks: Sequence[T], options: dict[str, Any], *, jobs: int,
              progress: Progress | None, on_done: Callable[[int, R], None] | None) -> list[R]:
    """A spawn process pool; records, progress and completions share one queue, so they keep their order."""
    ctx = multiprocessing.get_context("spawn")
    results: dict[int, R] = {}

    def _handle(item: Any) -> None:
        if isinstance(item, logging.LogRecord):
            replay(item)
        elif item[0] == "progress" and progress is not None:
            progress(*item[1:])
        elif item[0] == "done" and on_done is not None:
            on_done(item[1], results[item[1]])

    manager = multiprocessing.managers.SyncManager(ctx=ctx)
    manager.start(_ignore_interrupts)
    with manager:
        q = manager.Queue()
        stop = threading.Event()
        relay = threading.Thread(target=_relay, args=(q, stop, _handle), daemon=True)
        relay.start()
        try:
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                       initargs=(q, logging.getLogger(LOGGER).getEffectiveLevel()))
            try:
                futures = {pool.submit(fn, task, options, _QueueProgress(q)): i for i, task in enumerate(tasks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    q.put(("done", futures[future]))
            except BaseException as exc:
                _end_pool(pool, exc)
                raise
            pool.shutdown(wait=True)
        finally:
            with contextlib.suppress(EOFError, OSError):
                q.put(_DONE)
            stop.set()
            relay.join()
        return [results[i] for i in range(len(tasks))]


class _DaskForwarder(logging.Handler):
    """On a Dask worker: each record goes to the client live (a Dask event) and is kept
    with its task's result, so a record whose event is late or lost still arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[int, tuple[str, str, list[dict[str, Any]]]] = {}
        self.tasks_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.tasks_lock:
            entry = self.tasks.get(record.thread or 0) or (next(iter(self.tasks.values())) if self.tasks else None)
            if entry is None:
                return
            topic, key, kept = entry
            message = {"key": key, "seq": len(kept), "name": record.name, "levelno": record.levelno,
                       "levelname": record.levelname, "msg": prepared(record).getMessage(), "created": record.created}
            kept.append(message)
        try:
            from distributed import get_worker

            get_worker().log_event(topic, message)
        except (ValueError, TypeError):  # not on a worker, or the message would not serialise
            pass


_FORWARDER = _DaskForwarder()


class _DaskProgress:
    """On a Dask worker: a task's progress events go to the client live (a Dask event on
    the task's topic, so in order with its records), at most one per ``interval`` seconds
    besides the first and the last; the latest is also kept to return with the result."""

    def __init__(self, topic: str, key: str, *, interval: float = 0.2) -> None:
        self.topic, self.key, self.interval = topic, key, interval
        self.last: tuple[str, int, int] | None = None
        self.sent = 0.0

    def __call__(self, plate: str, done: int, total: int) -> None:
        import time

        self.last = (plate, done, total)
        now = time.monotonic()
        if self.sent and done < total and now - self.sent < self.interval:
            return
        self.sent = now
        try:
            from distributed import get_worker

            get_worker().log_event(self.topic, {"kind": "progress", "key": self.key, "plate": plate,
                                                "done": done, "total": total})
        except (ValueError, TypeError):  # not on a worker
            pass


def _dask_task(fn: Callable[..., R], topic: str, key: str, level: int, client_pid: int, live: bool,
               task: Any, options: dict[str, Any]) -> tuple[R, list[dict[str, Any]], tuple[str, int, int] | None]:
    """Run one task on a Dask worker, forwarding its progress events (if ``live``) and its
    ``cytoprofile`` records to the client (a worker inside the client's own process logs
    there directly)."""
    kept: list[dict[str, Any]] = []
    progress = _DaskProgress(topic, key) if live else None
    if os.getpid() == client_pid:
        return fn(task, options, progress), kept, progress.last if progress else None
    if _FORWARDER not in logging.getLogger(LOGGER).handlers:
        forward_records(_FORWARDER, level)
    logging.getLogger(LOGGER).setLevel(level)
    with _FORWARDER.tasks_lock:
        _FORWARDER.tasks[threading.get_ident()] = (topic, key, kept)
    try:
        return fn(task, options, progress), kept, progress.last if progress else None
    finally:
        with _FORWARDER.tasks_lock:
            _FORWARDER.tasks.pop(threading.get_ident(), None)


def _run_dask(
    fn: Callable[[T, dict[str, Any], Progress | None], R],
    tasks: Sequence[T],
    options: dict[str, Any],
    *,
    scheduler: str,
    progress: Progress | None,
    on_done: Callable[[int, R], None] | None,
    timeout: float,
    connect_timeout: float | None = None,
) -> list[R]:
    """Send each task to a Dask cluster; a task whose worker dies is retried elsewhere.

    Workers' records and progress events arrive as they are written, in order per
    task; records arrive again with each result and each is printed once (a retried
    task's repeated records are not printed twice). A task's progress events that
    arrive after its result are dropped; its result carries its last progress.
    """
    import uuid

    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    from .errors import RemoteError

    check_scheduler(scheduler, timeout=timeout, connect_timeout=connect_timeout)
    try:
        client = Client(scheduler, timeout=f"{timeout}s")
    except (OSError, ValueError, TypeError) as exc:
        raise RemoteError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check --scheduler") from exc
    topic = f"cytoprofile-log-{uuid.uuid4().hex}"
    relay = _DaskRelay(progress)
    level = logging.getLogger(LOGGER).getEffectiveLevel()
    try:
        client.subscribe_topic(topic, lambda event: relay.event(event[1]))
        keys = [f"cytoprofile-{i}-{task.plate}" for i, task in enumerate(tasks)]
        futures = [client.submit(_dask_task, fn, topic, key, level, os.getpid(), progress is not None,
                                 task, options, pure=False, retries=3, key=key)
                   for key, task in zip(keys, tasks, strict=True)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: dict[int, R] = {}
        for future in dask_completed(futures):
            i = index[future.key]
            results[i], kept, last = future.result()
            relay.finish(str(future.key), tasks[i].plate, kept, last)
            if on_done is not None:
                on_done(i, results[i])
        return [results[i] for i in range(len(tasks))]
    finally:
        client.unsubscribe_topic(topic)
        client.close()
        relay.flush()


class _DaskRelay:
    """On the client: prints workers' records once each and in each task's order, and passes
    their progress on, from the event thread (live) and the main thread (with each result),
    one at a time. A live record that overtakes an earlier one waits for it (events may
    arrive late or not at all; the result brings every record of its task)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next_seq: dict[str, int] = {}
        self.waiting: dict[str, dict[int, dict[str, Any]]] = {}
        self.finished: set[str] = set()
        self.lock = threading.Lock()

    def event(self, message: dict[str, Any]) -> None:
        with self.lock:
            if message.get("kind") != "progress":
                self._print(message)
            elif message["key"] not in self.finished and self.progress is not None:
                self.progress(message["plate"], message["done"], message["total"])

    def finish(self, key: str, plate: str, kept: list[dict[str, Any]], last: tuple[str, int, int] | None) -> None:
        with self.lock:
            self.finished.add(key)
            for message in kept:
                self._print(message)
            if self.progress is not None:
                self.progress(*(last or (plate, 1, 1)))

    def flush(self) -> None:
        """Print what still waits for a record that never came (a task that failed), in order."""
        with self.lock:
            for key, waiting in self.waiting.items():
                for seq in sorted(waiting):
                    replay(logging.makeLogRecord(waiting[seq]))
                    self.next_seq[key] = seq + 1
                waiting.clear()

    def _print(self, message: dict[str, Any]) -> None:
        key = message["key"]
        expected = self.next_seq.get(key, 0)
        if message["seq"] < expected:  # printed already (live, or by a retried attempt)
            return
        waiting = self.waiting.setdefault(key, {})
        waiting[message["seq"]] = message
        while expected in waiting:
            replay(logging.makeLogRecord(waiting.pop(expected)))
            expected += 1
        self.next_seq[key] = expected


def _default_timeouts() -> tuple[float, float]:
    """The storage settings' (connect, read) timeouts: ``--connect-timeout`` and ``--read-timeout``."""
    from . import io

    kwargs = io.current_storage().get("config_kwargs") or {}
    return (float(kwargs.get("connect_timeout", io.DEFAULT_CONNECT_TIMEOUT)),
            float(kwargs.get("read_timeout", io.DEFAULT_READ_TIMEOUT)))


def _open_connection(address: str, *, timeout: float) -> None:
    """Connect to ``tcp://HOST:PORT`` within ``timeout`` seconds and hang up; a refused or
    unanswered connection is a ``RemoteError`` at once, not after the whole wait."""
    import socket
    from urllib.parse import urlsplit

    from .errors import RemoteError

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "") or not parts.hostname or parts.port is None:
        return  # another transport (tls://, inproc://, ucx://): Dask's own handshake below bounds it
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as exc:
        why = f"no connection within {timeout:g}s" if isinstance(exc, TimeoutError) else (
            exc.strerror or type(exc).__name__).lower()
        raise RemoteError(f"cannot reach the Dask scheduler at {address} ({why}); check --scheduler "
                          "(tcp://HOST:PORT of a running `dask scheduler`) and --connect-timeout") from exc


def check_scheduler(address: str, *, timeout: float, connect_timeout: float | None = None) -> None:
    """Ask the scheduler who it is within ``timeout`` seconds; anything else is a ``RemoteError``.

    The connection alone is bounded by ``connect_timeout`` (default ``timeout``): a refused
    port fails at once. Dask's own client waits for a handshake without a bound, so a port
    that accepts connections but is no Dask scheduler (a web server, a silent listener)
    would hang it.
    """
    import asyncio
    import time

    started = time.monotonic()
    _open_connection(address, timeout=min(timeout, connect_timeout or timeout))
    left = max(0.1, timeout - (time.monotonic() - started))

    from distributed.core import rpc

    from .errors import RemoteError

    async def _identity() -> Any:
        peer = rpc(address, timeout=left)
        try:
            return await peer.identity()
        finally:
            await peer.close_rpc()

    async def _bounded() -> Any:
        return await asyncio.wait_for(_identity(), left)

    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:  # its own event loop, also under Jupyter's
            answer = pool.submit(asyncio.run, _bounded()).result()
    except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
        why = "no answer" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timed out" in str(exc) else str(exc)
        raise RemoteError(f"cannot reach the Dask scheduler at {address} ({why} within {timeout:g}s); check --scheduler "
                          "(tcp://HOST:PORT of a running `dask scheduler`)") from exc
    except Exception as exc:  # noqa: BLE001 - a reply that is no Dask message
        raise RemoteError(f"{address} answered, but not as a Dask scheduler ({type(exc).__name__}); check --scheduler") from exc
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise RemoteError(f"{address} is not a Dask scheduler (it says it is {answer.get('type') if isinstance(answer, dict) else answer!r}); "
                          "check --scheduler")
