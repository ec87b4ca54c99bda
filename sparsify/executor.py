"""Where the per-tensor work runs: in this process, a local process pool, or a Dask cluster.

Every executor is a :class:`concurrent.futures.Executor`; the work items are pure functions of
picklable jobs (:mod:`sparsify.work`) that reopen their inputs by path, so the bytes written never
depend on which executor ran them or how many workers it has.

* ``jobs=1``: :class:`InlineExecutor`, no process at all (the least memory).
* ``jobs=N``: a :class:`~concurrent.futures.ProcessPoolExecutor` of N workers, started through a
  fork server (a clean process: no threads or open files of the caller are inherited).
* ``scheduler=ADDRESS``: a ``dask.distributed`` client's executor (``pip install 'sparsify[dask]'``);
  the address may also come from ``SPARSIFY_SCHEDULER``. The workers need sparsify installed and
  the input at the same path (a shared file system).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sparsify.errors import UsageError

SCHEDULER_ENV = "SPARSIFY_SCHEDULER"
TIMEOUT_ENV = "SPARSIFY_SCHEDULER_TIMEOUT"
"""Seconds to wait for the scheduler to answer (default 30)."""

T = TypeVar("T")
R = TypeVar("R")


class InlineExecutor(Executor):
    """Runs each submitted call at once, in this process (for ``jobs=1`` and for tests)."""

    workers = 1

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered by result(), as a pool would
            future.set_exception(exc)
        return future


def default_jobs() -> int:
    """All the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# Below this many bytes of weights the default is to work in this process: starting workers would
# take longer than they save.
SMALL_MODEL_BYTES = 8 << 20


@dataclass(frozen=True)
class Workers:
    """An open executor: ``executor``, how many calls it runs at once, and whether they run in local
    processes (which can hand results over through files on this machine)."""

    executor: Executor
    count: int
    local_processes: bool = False


@contextlib.contextmanager
def open_executor(
    jobs: int | None = None, scheduler: str | None = None, work_bytes: int | None = None
) -> Iterator[Workers]:
    """Yield the :class:`Workers` of ``jobs`` local processes or, with a ``scheduler`` address (or
    ``SPARSIFY_SCHEDULER``), of a Dask cluster; shut down afterwards. The default ``jobs`` is every
    core, or 1 when the ``work_bytes`` to process are below :data:`SMALL_MODEL_BYTES`."""
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if jobs is not None and jobs < 1:
        raise UsageError(f"jobs must be >= 1, not {jobs}")
    if scheduler is not None:
        with _dask_executor(scheduler) as (executor, workers):
            yield Workers(executor, workers)
        return
    if jobs is None:
        jobs = 1 if work_bytes is not None and work_bytes < SMALL_MODEL_BYTES else default_jobs()
    if jobs == 1:
        yield Workers(InlineExecutor(), 1)
        return
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=_start_method(), initializer=_worker_started)
    try:
        yield Workers(pool, jobs, local_processes=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_method():
    """``fork`` where this process runs no other thread (workers start at once, with everything
    imported; the pool forks them all before its own thread starts), else a fork server (a clean
    process: a lock another thread held cannot be inherited), else ``spawn``."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["sparsify.work"])
    return context


def _worker_started() -> None:
    """In a new worker: forget the files a forked parent had open for its own jobs (the same open
    file would be shared, offsets and all)."""
    from sparsify import work

    work.forget_inherited()


@contextlib.contextmanager
def _dask_executor(address: str) -> Iterator[tuple[Executor, int]]:
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'sparsify[dask]'") from None
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV) or 30)
    except ValueError:
        raise UsageError(f"{TIMEOUT_ENV} must be a number of seconds, not {os.environ[TIMEOUT_ENV]!r}") from None
    try:
        client = Client(address, timeout=f"{seconds}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from None
    try:
        workers = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        # pure=False: a job's result is never taken from another client's cache
        yield client.get_executor(pure=False), workers
    finally:
        client.close()


def ordered_map(executor: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``executor``, results in the order of ``items``, with at most
    ``window`` calls submitted and not yet consumed (so memory holds at most that many results).
    Outstanding calls are cancelled if the consumer stops early."""
    pending: deque[Future] = deque()
    iterator = iter(items)
    try:
        for item in iterator:
            pending.append(executor.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def unordered_map(executor: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[tuple[int, R]]:
    """``(index, fn(item))`` as calls complete, at most ``window`` in flight (for work whose results
    are gathered before use, such as measurements)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending: dict[Future, int] = {}
    iterator = enumerate(items)
    try:
        for index, item in iterator:
            pending[executor.submit(fn, item)] = index
            while len(pending) >= window:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=pending.__getitem__):
                    yield pending.pop(future), future.result()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                yield pending.pop(future), future.result()
    finally:
        for future in pending:
            future.cancel()


def run_all(
    executor: Executor,
    fn: Callable[[T], R],
    items: list[T],
    window: int,
    on_result: Callable[[int, R], Any] | None = None,
) -> list[R]:
    """``[fn(item) for item in items]`` on ``executor`` (any completion order, results by index)."""
    results: list[Any] = [None] * len(items)
    for index, result in unordered_map(executor, fn, items, window):
        results[index] = result
        if on_result is not None:
            on_result(index, result)
    return results
