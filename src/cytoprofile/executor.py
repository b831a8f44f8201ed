"""Where plate tasks run: in this process, a local process pool, or a Dask cluster.

A task is a plain function ``fn(*args, options, progress)`` returning a picklable
result; the executor only decides where it runs and relays progress events.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

__all__ = ["check_scheduler", "run_plates"]

log = logging.getLogger("cytoprofile.executor")
R = TypeVar("R")
Progress = Callable[[str, int, int], None]


class _QueueProgress:
    """A picklable progress callback that forwards events to the parent through a queue."""

    def __init__(self, q: Any) -> None:
        self.q = q

    def __call__(self, plate: str, done: int, total: int) -> None:
        self.q.put((plate, done, total))


def run_plates(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    options: dict[str, Any],
    *,
    jobs: int = 1,
    scheduler: str | None = None,
    scheduler_timeout: float | None = None,
    progress: Progress | None = None,
) -> list[R]:
    """Run ``fn(*task, options, progress)`` for every task; results in task order.

    ``scheduler_timeout`` bounds the wait for a Dask scheduler's first answer (default:
    the storage connect + read timeouts, 20 s).
    """
    if scheduler:
        return _run_dask(fn, tasks, options, scheduler=scheduler, progress=progress,
                         timeout=scheduler_timeout if scheduler_timeout is not None else _default_timeout())
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*task, options, progress) for task in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        q = manager.Queue()
        stop = threading.Event()

        def _relay() -> None:
            while not stop.is_set():
                try:
                    event = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if progress is not None:
                    progress(*event)

        relay = threading.Thread(target=_relay, daemon=True)
        relay.start()
        results: dict[int, R] = {}
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
                futures = {pool.submit(fn, *task, options, _QueueProgress(q)): i for i, task in enumerate(tasks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
        finally:
            stop.set()
            relay.join()
        return [results[i] for i in range(len(tasks))]


def _run_dask(
    fn: Callable[..., R],
    tasks: Sequence[tuple[Any, ...]],
    options: dict[str, Any],
    *,
    scheduler: str,
    progress: Progress | None,
    timeout: float,
) -> list[R]:
    """Send each task to a Dask cluster; a task whose worker dies is retried elsewhere."""
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    from .errors import RemoteError

    check_scheduler(scheduler, timeout=timeout)
    try:
        client = Client(scheduler, timeout=f"{timeout}s")
    except (OSError, ValueError, TypeError) as exc:
        raise RemoteError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check --scheduler") from exc
    try:
        futures = [client.submit(fn, *task, options, None, pure=False, retries=3, key=f"cytoprofile-{i}-{task[-1]}")
                   for i, task in enumerate(tasks)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: dict[int, R] = {}
        for future in dask_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            if progress is not None:
                progress(str(tasks[i][-1]), 1, 1)
        return [results[i] for i in range(len(tasks))]
    finally:
        client.close()


def _default_timeout() -> float:
    from . import io

    kwargs = io.current_storage().get("config_kwargs") or {}
    return float(kwargs.get("connect_timeout", io.DEFAULT_CONNECT_TIMEOUT)) + float(
        kwargs.get("read_timeout", io.DEFAULT_READ_TIMEOUT))


def check_scheduler(address: str, *, timeout: float) -> None:
    """Ask the scheduler who it is within ``timeout`` seconds; anything else is a ``RemoteError``.

    Dask's own client waits for a handshake without a bound, so a port that accepts
    connections but is no Dask scheduler (a web server, a silent listener) would hang it.
    """
    import asyncio

    from distributed.core import rpc

    from .errors import RemoteError

    async def _identity() -> Any:
        peer = rpc(address, timeout=timeout)
        try:
            return await peer.identity()
        finally:
            await peer.close_rpc()

    async def _bounded() -> Any:
        return await asyncio.wait_for(_identity(), timeout)

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
