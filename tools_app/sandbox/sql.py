"""Run a team's read-only SQL tool: one SELECT against the team's own PostgreSQL database, and nothing else.

Three layers, each meant to hold alone, so that a gap in one is not a breach (SECURITY.md, "Tools"):

1. ``check_select`` parses the statement with sqlglot (PostgreSQL dialect) and refuses anything but a single
   SELECT: writes anywhere in the tree (a writing CTE), row locks, ``SELECT … INTO`` and denied functions.
2. ``run_select`` runs it in a READ ONLY transaction that is always rolled back, as a server-side cursor
   (PostgreSQL then takes exactly one statement, and only a query), under ``statement_timeout`` and a row cap.
3. The tool's DSN names a role that the team's admin granted only CONNECT and SELECT: whatever the first two
   miss (``dblink`` opens a session outside the read-only transaction), the role's privileges refuse.

Fixed, parameterized queries are the preferred tool: the admin writes the template (``check_fixed_query``) and
the model supplies only the arguments, which reach PostgreSQL as bound parameters, never as SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
import sqlglot
from psycopg import errors
from sqlglot import exp
from sqlglot.errors import SqlglotError

CONNECT_TIMEOUT_SECONDS = 5
ONLY_SELECT = "refused: only a single SELECT may run"

# Nodes that make a statement do more than read, wherever they sit in the tree: PostgreSQL accepts
# INSERT/UPDATE/DELETE/MERGE ... RETURNING inside a WITH clause of a SELECT. ``Command`` is what sqlglot falls
# back to for statements it does not model (SET, RESET, DO, CALL, LOCK, EXPLAIN, PREPARE, EXECUTE, SHOW).
FORBIDDEN_STATEMENTS: tuple[type[exp.Expr], ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy,
    exp.Create, exp.Drop, exp.Alter, exp.TruncateTable, exp.Grant, exp.Revoke,
    exp.Set, exp.Transaction, exp.Commit, exp.Rollback, exp.Command,
)  # fmt: skip

# Functions a SELECT can call to reach past the tables it reads. Most need privileges the tool's role lacks;
# the list refuses them before they reach the database. Each group: why, exact names, name prefixes.
DENIED_FUNCTIONS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("it reads the database server's files", frozenset({"pg_read_file", "pg_read_binary_file", "pg_stat_file"}),
     ("pg_ls_", "pg_file_")),
    ("it moves data between large objects and the server's files", frozenset({"loread", "lowrite"}), ("lo_",)),
    ("it connects to a database outside this read-only transaction", frozenset(), ("dblink",)),
    ("it runs SQL text that this check never sees", frozenset({
        "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
        "ts_stat", "ts_rewrite",
    }), ()),
    ("it holds the connection without doing work", frozenset(), ("pg_sleep",)),
    ("it changes server or session settings", frozenset({"set_config", "pg_reload_conf", "pg_rotate_logfile"}), ()),
    ("it acts on other sessions or takes locks they wait on",
     frozenset({"pg_cancel_backend", "pg_terminate_backend", "pg_log_backend_memory_contexts"}),
     ("pg_advisory_", "pg_try_advisory_")),
    ("it writes", frozenset({
        "nextval", "setval", "pg_notify", "pg_import_system_collations", "pg_switch_wal", "pg_promote",
        "pg_logical_emit_message",
    }), ("pg_stat_reset", "pg_create_", "pg_drop_", "pg_replication_", "pg_backup_")),
)  # fmt: skip

# sqlglot reads the Unicode-escaped identifier U&"\0070g_read_file" as `U & "\0070g_read_file"`, while
# PostgreSQL reads it as pg_read_file: a denied name could hide in it. A tool query has no use for it.
UNICODE_IDENTIFIER = re.compile(r'\bu&"', re.IGNORECASE)


class SqlToolError(Exception):
    """A SQL tool call that returned no rows. The message is for team admins, the audit trail and the model."""


class SqlRefused(SqlToolError):
    """The statement is not allowed: the parser, the read-only transaction or the role's privileges refused it."""


class SqlFailed(SqlToolError):
    """An allowed statement did not complete: it ran too long, the database was unreachable or rejected it."""


@dataclass(frozen=True)
class QueryResult:
    """The rows a SELECT returned, at most the cap; ``truncated`` says more rows existed."""

    columns: list[str]
    rows: list[tuple[object, ...]]
    truncated: bool


def check_select(sql: str) -> None:
    """Refuse ``sql`` (raise ``SqlRefused``) unless it is one SELECT, or a UNION of them, that only reads.

    Refused: text that does not parse, several statements, any other statement, writes anywhere in the tree
    (``WITH x AS (INSERT … RETURNING …) SELECT …``), ``SELECT … INTO``, ``FOR UPDATE/SHARE`` and the functions of
    ``DENIED_FUNCTIONS``. This is the first layer only: the database layers must hold without it.
    """
    _parse_select(sql)


def check_fixed_query(template: str) -> list[str]:
    """The parameter names of an admin's query template, sorted; ``SqlRefused`` if it is not a safe SELECT.

    Arguments are written ``%(name)s`` (psycopg's style, so a literal ``%`` is written ``%%``); positional
    placeholders are refused, so that every argument the model supplies is named in the tool's schema.
    """
    names: set[str] = set()
    for placeholder in _parse_select(template).find_all(exp.Placeholder, exp.Parameter):
        if not isinstance(placeholder, exp.Placeholder) or not isinstance(placeholder.this, exp.Identifier):
            raise SqlRefused(
                f"refused: the template uses the positional placeholder {placeholder.sql(dialect='postgres')}; "
                "write each argument as %(name)s"
            )
        names.add(placeholder.name)
    return sorted(names)


def run_select(
    dsn: str,
    sql: str,
    *,
    params: Mapping[str, object] | None = None,
    timeout_ms: int,
    max_rows: int,
    check: bool = True,
) -> QueryResult:
    """Run one SELECT on the team's database and return at most ``max_rows`` rows.

    ``dsn`` must name a role holding only CONNECT and SELECT grants. ``params`` are bound by PostgreSQL, never
    spliced into the text. The transaction is READ ONLY and always rolled back; each statement of it (the cursor's
    DECLARE, then its FETCH) is cancelled after ``timeout_ms``, and only ``max_rows + 1`` rows ever leave the
    server (a server-side cursor).

    Raises ``SqlRefused`` (the parser, the transaction or the role refused) or ``SqlFailed`` (timeout, the
    database unreachable, an error in the query), each with a message naming what happened.
    ``check=False`` skips the parser: it exists only so that tests can prove the database layers hold alone.
    """
    if timeout_ms < 1 or max_rows < 1:
        raise ValueError("timeout_ms and max_rows must be positive (a statement_timeout of 0 means none)")
    if check:
        check_select(sql)
    try:
        connection = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.OperationalError as error:
        raise SqlFailed(f"could not connect to the team's database: {_reason(error)}") from error
    with connection:
        connection.read_only = True
        try:
            with connection.transaction(force_rollback=True):
                _limit_transaction(connection, timeout_ms)
                with connection.cursor(name="sql_tool") as cursor:
                    cursor.execute(sql, params)
                    rows = cursor.fetchmany(max_rows + 1)
                    columns = [column.name for column in cursor.description or ()]
        except psycopg.Error as error:
            raise _translate(error, timeout_ms) from error
    return QueryResult(columns=columns, rows=rows[:max_rows], truncated=len(rows) > max_rows)


def _parse_select(sql: str) -> exp.Query:
    """The single read-only query in ``sql``, parsed; ``SqlRefused`` naming the first rule it breaks."""
    if UNICODE_IDENTIFIER.search(sql):
        raise SqlRefused('refused: Unicode-escaped identifiers (U&"…") are not allowed')
    try:
        parsed = sqlglot.parse(sql, dialect="postgres")
    except SqlglotError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SqlRefused(f"refused: the statement does not parse as PostgreSQL ({first_line})") from error
    # Empty statements (";;") and comments after the last ";" come back as None or Semicolon: nothing runs.
    statements = [statement for statement in parsed if statement and not isinstance(statement, exp.Semicolon)]
    if not statements:
        raise SqlRefused("refused: the statement is empty")
    if len(statements) > 1:
        kinds = ", ".join(_keyword(statement) for statement in statements)
        raise SqlRefused(f"{ONLY_SELECT}; found {len(statements)} statements ({kinds})")
    query = statements[0]
    if not isinstance(query, exp.Select | exp.SetOperation | exp.Subquery):
        raise SqlRefused(f"{ONLY_SELECT}; found {_keyword(query)}")
    for node in query.walk():
        if isinstance(node, FORBIDDEN_STATEMENTS):
            where = " inside a WITH clause" if node.find_ancestor(exp.CTE) else " inside the query"
            raise SqlRefused(f"{ONLY_SELECT}; found {_keyword(node)}{where}")
        if isinstance(node, exp.Into):
            raise SqlRefused(f"refused: SELECT … {node.sql(dialect='postgres')} creates a table; a tool may only read")
        if isinstance(node, exp.Lock):
            raise SqlRefused(f"refused: {node.sql(dialect='postgres')} locks rows; a tool may only read")
        if isinstance(node, exp.Func):
            _check_function(node)
    return query


def _check_function(call: exp.Func) -> None:
    """Refuse a call to a function of ``DENIED_FUNCTIONS``, under any of its names."""
    names = [call.name] if isinstance(call, exp.Anonymous) else type(call).sql_names()
    for name in (name.lower() for name in names):
        for why, exact, prefixes in DENIED_FUNCTIONS:
            if name in exact or name.startswith(prefixes):
                raise SqlRefused(f"refused: the function {name}() is not allowed: {why}")


def _keyword(statement: exp.Expr) -> str:
    """How a refusal names a statement: its first word as PostgreSQL SQL (``DROP``, ``COMMIT``, ``SET``)."""
    return statement.sql(dialect="postgres", comments=False).split()[0].upper()


def _limit_transaction(connection: psycopg.Connection, timeout_ms: int) -> None:
    """Bound the transaction's statements, lock waits and idle time; pin the string syntax the parser assumes."""
    limit = str(timeout_ms)
    connection.execute(
        "SELECT set_config('statement_timeout', %(limit)s, true), set_config('lock_timeout', %(limit)s, true),"
        " set_config('idle_in_transaction_session_timeout', %(limit)s, true),"
        " set_config('standard_conforming_strings', 'on', true)",
        {"limit": limit},
    )


def _translate(error: psycopg.Error, timeout_ms: int) -> SqlToolError:
    """The failure a team admin can act on, for an error PostgreSQL (or psycopg) raised."""
    reason = _reason(error)
    if isinstance(error, errors.QueryCanceled):
        return SqlFailed(f"the query ran longer than {timeout_ms} ms and was cancelled")
    if isinstance(error, errors.LockNotAvailable):
        return SqlFailed(f"the query waited longer than {timeout_ms} ms for a lock and was cancelled")
    if isinstance(error, errors.InsufficientPrivilege):
        return SqlRefused(f"refused by the database: the tool's role lacks the privilege ({reason})")
    if isinstance(error, errors.ReadOnlySqlTransaction):
        return SqlRefused(f"refused by the database: the query tried to write in a read-only transaction ({reason})")
    return SqlFailed(f"the database rejected the query: {reason}")


def _reason(error: psycopg.Error) -> str:
    """PostgreSQL's own one-line message for ``error`` (psycopg's, for errors raised before the server)."""
    return error.diag.message_primary or str(error).strip().splitlines()[0]
