"""Reads and writes with their SQL written out, for the few statements every ``/v1`` request runs.

Every ``/v1`` request authenticates its key, finds the deployment it calls, reads the deployment's guard policy
and tool grants, and inserts and counts its usage row; every REST API request reads its token and user. Through
the ORM each of those statements costs 0.25-0.6 ms of CPU, nine tenths of it building and compiling the query
rather than running it (``bench/studio_relay.py``; README, Performance), on the two cores vLLM needs. These
helpers run the same statements from SQL written out:

- ``rows`` / ``first``: model instances (``Model.from_db``) from ``SELECT <its columns> FROM <its table> WHERE
  <condition>``, each column's value converted as the ORM converts it (the database's converters, then the
  field's: aware datetimes, JSON, booleans). Related objects are not joined in: read them the same way, by id.
- ``exists`` / ``count``: whether such rows exist, how many.
- ``insert``: a new row from a model instance (each field's ``pre_save`` and database preparation, as
  ``Model.save`` does for an insert), its primary key set on the instance.
- ``update``: columns set on the rows of a condition.
- ``prepare``: a value as ``field`` stores it (a datetime on SQLite, say), for a condition's parameters.

Like ``QuerySet.update``, ``insert`` and ``update`` send none of Django's model signals (``pre_save``,
``post_save``): use them only for models nothing listens to (``UsageRecord``).

A condition is SQL over the model's own columns with ``%s`` placeholders, e.g. ``'"prefix" = %s'``: a constant
of the code, with every value passed in ``params``, never written into it (the statements below are built from
the models' table and column names and such conditions, hence their ``noqa: S608``). Team
scoping is kept: for a team-owned model (``TeamOwnedModel``) every helper adds ``"team_id" = <team_id>`` to the
condition and refuses to run without ``team_id``, unless ``unscoped=True`` says, as ``.unscoped()`` does, that the
read spans teams (authenticating a key, which names its team only once read).

Use these only where a profile shows the ORM's compiling matters; everywhere else, the ORM.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import connections, models

from accounts.tenancy import TeamOwnedModel, TeamScopeError

M = TypeVar("M", bound=models.Model)

DATABASE = "default"


def quote(name: str) -> str:
    """A table or column name quoted for the database's SQL."""
    return connections[DATABASE].ops.quote_name(name)


def _field(model: type[models.Model], name: str) -> models.Field[Any, Any]:
    """``model``'s field ``name``, which must be one of its columns."""
    field = model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise TypeError(f"{model.__name__}.{name} is not a column of its table.")
    return field


def _column(model: type[models.Model], name: str) -> str:
    return quote(str(_field(model, name).column))


def _scoped(
    model: type[models.Model], condition: str, params: Sequence[Any], team_id: int | None, unscoped: bool
) -> tuple[str, list[Any]]:
    """``condition`` and its parameters, with the team's condition added for a team-owned model."""
    if not issubclass(model, TeamOwnedModel) or unscoped:
        return condition, list(params)
    if team_id is None:
        raise TeamScopeError(f"{model.__name__} is team-owned: pass team_id (or unscoped=True).")
    return f"{_column(model, 'team')} = %s AND ({condition})", [team_id, *params]


@dataclass(frozen=True)
class _Reading:
    """How ``rows`` reads a model's rows on one connection: its columns in order, their attribute names, and each
    column's converters (the database's and the field's, as the ORM's compiler applies them)."""

    columns: str
    attnames: list[str]
    converters: list[tuple[int, list[Any], Any]]  # (column index, converters, the column's expression)

    @classmethod
    def of(cls, model: type[models.Model], connection: Any) -> _Reading:
        fields = model._meta.concrete_fields
        converters = []
        for index, field in enumerate(fields):
            column = field.get_col(model._meta.db_table)
            found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
            if found:
                converters.append((index, found, column))
        return cls(", ".join(quote(f.column) for f in fields), [f.attname for f in fields], converters)

    def instance(self, model: type[M], row: Sequence[Any], connection: Any) -> M:
        values = list(row)
        for index, converters, column in self.converters:
            for convert in converters:
                values[index] = convert(values[index], column, connection)
        return model.from_db(DATABASE, self.attnames, values)


# Per connection (each thread has its own), per model: worked out on a connection's first read of the model.
_readings: weakref.WeakKeyDictionary[Any, dict[type[models.Model], _Reading]] = weakref.WeakKeyDictionary()


def rows(
    model: type[M], condition: str, params: Sequence[Any] = (), *, team_id: int | None = None,
    unscoped: bool = False, limit: int | None = None,
) -> list[M]:  # fmt: skip
    """The instances of ``model`` whose rows match ``condition`` (see the module), ``limit`` of them at most."""
    connection = connections[DATABASE]
    known = _readings.setdefault(connection, {})
    reading = known.get(model) or known.setdefault(model, _Reading.of(model, connection))
    where, values = _scoped(model, condition, params, team_id, unscoped)
    sql = f"SELECT {reading.columns} FROM {quote(model._meta.db_table)} WHERE {where}"  # noqa: S608
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        found = cursor.fetchall()
    return [reading.instance(model, row, connection) for row in found]


def first(
    model: type[M], condition: str, params: Sequence[Any] = (), *, team_id: int | None = None, unscoped: bool = False
) -> M | None:
    """The instance whose row matches ``condition``, or None; for conditions on unique columns (any one row
    otherwise)."""
    found = rows(model, condition, params, team_id=team_id, unscoped=unscoped, limit=1)
    return found[0] if found else None


def exists(
    model: type[models.Model], condition: str, params: Sequence[Any] = (), *, team_id: int | None = None,
    unscoped: bool = False,
) -> bool:  # fmt: skip
    """Whether a row of ``model`` matches ``condition``."""
    where, values = _scoped(model, condition, params, team_id, unscoped)
    sql = f"SELECT 1 FROM {quote(model._meta.db_table)} WHERE {where} LIMIT 1"  # noqa: S608
    return _one_value(sql, values) is not None


def count(
    model: type[models.Model], condition: str, params: Sequence[Any] = (), *, team_id: int | None = None,
    unscoped: bool = False,
) -> int:  # fmt: skip
    """How many rows of ``model`` match ``condition``."""
    where, values = _scoped(model, condition, params, team_id, unscoped)
    sql = f"SELECT COUNT(*) FROM {quote(model._meta.db_table)} WHERE {where}"  # noqa: S608
    return int(_one_value(sql, values))


def _one_value(sql: str, params: list[Any]) -> Any:
    with connections[DATABASE].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row is not None else None


def prepare(model: type[models.Model], field: str, value: Any) -> Any:
    """``value`` as ``model``'s ``field`` is stored, for a condition's parameters (a datetime is text on SQLite)."""
    return _field(model, field).get_db_prep_value(value, connections[DATABASE], prepared=False)


def insert(obj: M) -> M:
    """Insert ``obj`` as a new row (every concrete field but an automatic primary key) and set its primary key."""
    meta = obj._meta
    connection = connections[DATABASE]
    generated = meta.auto_field  # the primary key the database numbers, if any
    fields = [f for f in meta.concrete_fields if f is not generated]
    values = [f.get_db_prep_save(f.pre_save(obj, add=True), connection) for f in fields]
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({placeholders})"  # noqa: S608
    with connection.cursor() as cursor:
        if generated is None:
            cursor.execute(sql, values)
        elif connection.features.can_return_columns_from_insert:  # PostgreSQL; SQLite 3.35 and later
            cursor.execute(f"{sql} RETURNING {quote(generated.column)}", values)
            (obj.pk,) = cursor.fetchone()
        else:
            cursor.execute(sql, values)
            obj.pk = connection.ops.last_insert_id(cursor, meta.db_table, generated.column)
    obj._state.adding = False
    obj._state.db = DATABASE
    return obj


def update(
    model: type[models.Model], changes: dict[str, Any], condition: str, params: Sequence[Any] = (), *,
    team_id: int | None = None, unscoped: bool = False,
) -> int:  # fmt: skip
    """Set ``changes`` (field name: value) on the rows matching ``condition``; the number of rows changed."""
    where, values = _scoped(model, condition, params, team_id, unscoped)
    connection = connections[DATABASE]
    fields = [_field(model, name) for name in changes]
    assignments = ", ".join(f"{_column(model, f.name)} = %s" for f in fields)
    prepared = [f.get_db_prep_save(changes[f.name], connection) for f in fields]
    with connection.cursor() as cursor:
        sql = f"UPDATE {quote(model._meta.db_table)} SET {assignments} WHERE {where}"  # noqa: S608
        cursor.execute(sql, [*prepared, *values])
        return int(cursor.rowcount)
