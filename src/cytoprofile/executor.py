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

__all__ = ["run_plates"]

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
    progress: Progress | None = None,
) -> list[R]:
    """Run ``fn(*task, options, progress)`` for every task; results in task order."""
    if scheduler:
        return _run_dask(fn, tasks, options, scheduler=scheduler, progress=progress)
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
) -> list[R]:
    """Send each task to a Dask cluster; a task whose worker dies is retried elsewhere."""
    from dask.distributed import Client
    from dask.distributed import as_completed as dask_completed

    from .errors import RemoteError

    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, ValueError, TypeError) as exc:
        raise RemoteError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); check the address") from exc
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
