"""The /v1 API's database threads (``serving_app.database``): connections kept between trips, replaced when they
die, and a synchronous caller's transaction still seen."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from accounts.models import Team
from serving_app.database import in_database_thread

T = TypeVar("T")


def where_am_i() -> tuple[str, int]:
    """The thread a trip ran on and the database session that served it (the server's backend pid)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return threading.current_thread().name, pid


def team_names() -> list[str]:
    return list(Team.objects.order_by("slug").values_list("slug", flat=True))


def trips(func: Callable[[], T], count: int) -> list[T]:
    """``count`` trips of ``func`` to the API's database threads, one after the other, from an event loop."""

    async def run() -> list[T]:
        trip = in_database_thread(func)
        return [await trip() for _ in range(count)]

    return asyncio.run(asyncio.wait_for(run(), 60))


@pytest.mark.django_db(transaction=True)
def test_trips_from_an_event_loop_run_on_the_api_threads_each_keeping_its_connection() -> None:
    served = trips(where_am_i, 12)
    sessions_by_thread: dict[str, set[int]] = {}
    for thread, pid in served:
        sessions_by_thread.setdefault(thread, set()).add(pid)
    assert all(thread.startswith("atelier-api-db") for thread in sessions_by_thread)
    assert all(len(pids) == 1 for pids in sessions_by_thread.values())  # no thread opened a second connection
    assert len({pid for _, pid in served}) < len(served)


@pytest.mark.django_db(transaction=True)
def test_kept_connections_that_the_server_dropped_are_replaced_before_the_next_trip() -> None:
    dropped = {pid for _, pid in trips(where_am_i, 12)}
    with connection.cursor() as cursor:  # the server ends those sessions, as a restart of the database would
        cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [list(dropped)])
    Team.objects.create(slug="acme", name="Acme")

    assert trips(team_names, 12) == [["acme"]] * 12  # every trip answered
    assert not {pid for _, pid in trips(where_am_i, 12)} & dropped  # on new connections


@pytest.mark.django_db
def test_under_a_synchronous_caller_a_trip_sees_its_transaction() -> None:
    # Django's test client runs async views this way: the test's own (uncommitted) rows must be visible.
    Team.objects.create(slug="acme", name="Acme")
    assert async_to_sync(in_database_thread(team_names))() == ["acme"]
    assert async_to_sync(in_database_thread(where_am_i))()[0] == threading.current_thread().name
