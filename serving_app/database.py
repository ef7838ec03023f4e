"""The ``/v1`` API's database work, on threads of its own that keep their connections open.

Django under ASGI runs a request's database work in a thread made for that request: the first query opens a
new connection and the end of the request closes it. Each ``/v1`` request paid for that connection (on the
embedded SQLite, Django registers its SQL functions and runs the WAL pragmas on every one; on PostgreSQL
without ``DATABASE_POOL_SIZE``, a new server process), and for three trips to its thread.

``in_database_thread(func)`` runs ``func`` on the API's ``THREADS`` database threads instead, and ``/v1``
makes one trip there before it generates (authentication with admission) and one after (the usage row's
end). Each thread keeps its connection between trips. Before a trip, a connection on which a query failed,
or any where ``CONN_HEALTH_CHECKS`` is on (PostgreSQL), is replaced when it no longer answers; a pooled
connection goes back to the pool after each trip, so that idle threads never hold the pool's connections.

Why several threads and not one, on SQLite too: a trip takes a few milliseconds of CPU but, while 16 answers
stream, tens of milliseconds of waiting for the interpreter lock and the cores, and on one thread every request
waited for all the trips ahead of it (16 concurrent streams: time to first token p95 1.4-1.6 s on one thread,
0.36-0.69 s on eight; README, Performance). SQLite's write lock is held only inside each short statement.

Only short trips belong here. ``close_kept_connections()`` closes what the threads keep (a test session before
it drops its database). Under an outer ``async_to_sync`` (Django's test client, a synchronous caller)
``func`` runs in that caller's thread, as Django's own ``sync_to_async`` does, so it sees that thread's
transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import wraps
from typing import ParamSpec, TypeVar

from asgiref.sync import AsyncToSync, sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")

# Trips run side by side on this many threads (each with its own connection); more only queue.
THREADS = 8

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="atelier-api-db")
        return _executor


def close_kept_connections(timeout: float = 30.0) -> None:
    """Close the connections the database threads keep and let the threads go; the next trip starts new ones."""
    global _executor
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is None:
        return
    # One closing job per thread: each waits at the barrier until all are running, so no thread takes two.
    barrier = threading.Barrier(THREADS)

    def close() -> None:
        connections.close_all()
        barrier.wait(timeout)

    wait([executor.submit(close) for _ in range(THREADS)], timeout=timeout)
    executor.shutdown(wait=False)


def in_database_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function that runs it on the API's database threads (see the module)."""
    job = _with_kept_connections(func)

    @wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        if getattr(AsyncToSync.executors, "current", None) is not None:  # a synchronous caller waits above us
            return await sync_to_async(func)(*args, **kwargs)
        return await sync_to_async(job, thread_sensitive=False, executor=_threads())(*args, **kwargs)

    return call


def _with_kept_connections(func: Callable[P, R]) -> Callable[P, R]:
    @wraps(func)
    def job(*args: P.args, **kwargs: P.kwargs) -> R:
        _check_kept_connections()
        try:
            return func(*args, **kwargs)
        finally:
            _return_pooled_connections()

    return job


def _check_kept_connections() -> None:
    """Replace a kept connection that no longer answers: checked when a query on it failed and, where
    ``CONN_HEALTH_CHECKS`` is on (PostgreSQL), before every trip. (Django's ``close_old_connections`` would
    close them instead: under ``CONN_MAX_AGE`` 0 a connection lives for one request, these for the process.)"""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        checked = connection.errors_occurred or connection.settings_dict["CONN_HEALTH_CHECKS"]
        if checked and not connection.is_usable():
            connection.close()
        else:
            connection.errors_occurred = False


def _return_pooled_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if connection.settings_dict.get("OPTIONS", {}).get("pool"):
            connection.close()  # back to the pool
