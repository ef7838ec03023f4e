"""The read-only SQL tool against a real PostgreSQL: escapes change nothing, at each layer on its own.

A database of its own per pytest worker holds ``canary`` (the rows every escape must leave as they were), an
``orders`` table to join, ``numbers`` (50 rows, for the row cap) and ``payroll``, which the tool's role may not
read. The role holds CONNECT and SELECT grants only, as the team's admin sets it up. No Django database here.

Each escape is tried three ways: the parser alone (``check_select``), the database layers alone
(``run_select(check=False)``: read-only transaction, server-side cursor, the role), and the role alone (a plain
autocommit connection, several statements allowed). Each must refuse it or leave everything as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tools_app.sandbox.sql import (
    QueryResult,
    SqlFailed,
    SqlRefused,
    SqlToolError,
    check_fixed_query,
    check_select,
    run_select,
)

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
DATABASE = f"atelier_tool_sql_{WORKER}"
READER = f"atelier_tool_reader_{WORKER}"
READER_PASSWORD = "reader-only"
SERVER = make_conninfo(
    os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"), dbname="postgres"
)
CANARY = [(1, "alice"), (2, "bob"), (3, "charlie")]
# Where ``COPY … TO PROGRAM 'touch …'`` would leave a file (the database server's /tmp: it runs on this machine).
COPY_MARKER = Path(f"/tmp/atelier_tool_sql_{WORKER}_copy_ran")
TIMEOUT_MS = 2000

_server = conninfo_to_dict(SERVER)
DBLINK_TARGET = (
    f"host={_server.get('host', '127.0.0.1')} port={_server.get('port', 5432)} dbname={DATABASE} user=postgres"
)

# (SQL, what the parser's refusal names). Every one of these must leave the canary as it was.
ESCAPES = [
    pytest.param(
        "WITH x AS (INSERT INTO canary (id, name) VALUES (99, 'mallory') RETURNING *) SELECT * FROM x",
        "found INSERT inside a WITH clause",
        id="writing-cte-insert",
    ),
    pytest.param(
        "WITH x AS (DELETE FROM canary RETURNING *) SELECT * FROM x", "found DELETE inside a WITH clause",
        id="writing-cte-delete",
    ),
    pytest.param(
        "WITH x AS (UPDATE canary SET name = 'mallory' RETURNING *) SELECT * FROM x",
        "found UPDATE inside a WITH clause",
        id="writing-cte-update",
    ),
    pytest.param("SELECT 1; DROP TABLE canary", "found 2 statements (SELECT, DROP)", id="select-then-drop"),
    pytest.param("COMMIT; DROP TABLE canary", "found 2 statements (COMMIT, DROP)", id="commit-then-drop"),
    pytest.param("SET ROLE postgres", "found SET", id="set-role"),
    pytest.param("RESET ALL", "found RESET", id="reset"),
    pytest.param("BEGIN", "found BEGIN", id="begin"),
    pytest.param("ROLLBACK", "found ROLLBACK", id="rollback"),
    pytest.param("SELECT pg_read_file('/etc/passwd')", "pg_read_file() is not allowed", id="pg-read-file"),
    pytest.param(
        "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')", "pg_read_binary_file() is not allowed",
        id="pg-read-binary-file-qualified",
    ),
    pytest.param(
        "SELECT U&\"\\0070g_read_file\"('/etc/passwd')",
        "Unicode-escaped identifiers",
        id="pg-read-file-unicode-escaped",
    ),
    pytest.param("SELECT lo_import('/etc/passwd')", "lo_import() is not allowed", id="lo-import"),
    pytest.param(
        f"SELECT * FROM dblink('{DBLINK_TARGET}', 'DELETE FROM canary') AS t(x text)",  # noqa: S608 (a constant)
        "dblink() is not allowed",
        id="dblink",
    ),
    pytest.param(
        "SELECT query_to_xml('DELETE FROM canary RETURNING *', true, true, '')", "query_to_xml() is not allowed",
        id="query-to-xml",
    ),
    pytest.param(f"COPY canary TO PROGRAM 'touch {COPY_MARKER}'", "found COPY", id="copy-to-program"),
    pytest.param("SELECT * FROM canary FOR UPDATE", "FOR UPDATE locks rows", id="for-update"),
    pytest.param("SELECT * FROM canary FOR NO KEY UPDATE", "FOR NO KEY UPDATE locks rows", id="for-no-key-update"),
    pytest.param("SELECT * FROM canary FOR SHARE", "FOR SHARE locks rows", id="for-share"),
    pytest.param("SELECT * FROM canary FOR KEY SHARE", "FOR KEY SHARE locks rows", id="for-key-share"),
    pytest.param("SELECT * INTO newtable FROM canary", "INTO newtable creates a table", id="select-into"),
    pytest.param(
        "SELECT set_config('default_transaction_read_only', 'off', false)", "set_config() is not allowed",
        id="set-config",
    ),
    pytest.param("DO $$ BEGIN DELETE FROM canary; END $$", "found DO", id="do-block"),
    pytest.param("CALL wipe_canary()", "found CALL", id="call-procedure"),
    pytest.param("LOCK TABLE canary", "found LOCK", id="lock-table"),
    pytest.param("LISTEN canary_events", "found LISTEN", id="listen"),
    pytest.param("NOTIFY canary_events", "found NOTIFY", id="notify"),
    pytest.param("EXPLAIN ANALYZE DELETE FROM canary", "found EXPLAIN", id="explain-analyze"),
    pytest.param("PREPARE wipe AS DELETE FROM canary", "found PREPARE", id="prepare"),
    pytest.param("EXECUTE wipe", "found EXECUTE", id="execute"),
    pytest.param(
        "/* only reading */ SeLeCt 1 -- harmless\n; DeLeTe FrOm canary", "found 2 statements (SELECT, DELETE)",
        id="dml-after-comment-newline",
    ),
    pytest.param(
        "wItH x aS (dElEtE fRoM canary rEtUrNiNg *) sElEcT * fRoM x", "found DELETE inside a WITH clause",
        id="mixed-case-writing-cte",
    ),
    pytest.param(
        "SELECT 1 -- PostgreSQL ends this comment at the carriage return\r, pg_read_file('/etc/passwd')",
        "pg_read_file() is not allowed",
        id="comment-ended-by-carriage-return",
    ),
]  # fmt: skip
ESCAPE_SQL = [pytest.param(escape.values[0], id=escape.id) for escape in ESCAPES]


@dataclass(frozen=True)
class ToolDatabase:
    """The tool's DSN (the SELECT-only role) and the superuser's, to set up and to read the canary."""

    dsn: str
    admin_dsn: str


@pytest.fixture(scope="module")
def tool_database() -> Iterator[ToolDatabase]:
    with psycopg.connect(SERVER, autocommit=True) as server:
        _drop(server)  # what a crashed run left behind
        server.execute(f"CREATE DATABASE {DATABASE}")
        server.execute(f"REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC")
        server.execute(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
        server.execute(f"GRANT CONNECT ON DATABASE {DATABASE} TO {READER}")
        admin_dsn = make_conninfo(SERVER, dbname=DATABASE)
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(
                """
                REVOKE CREATE ON SCHEMA public FROM PUBLIC;
                CREATE TABLE canary (id integer PRIMARY KEY, name text NOT NULL);
                INSERT INTO canary VALUES (1, 'alice'), (2, 'bob'), (3, 'charlie');
                CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES canary, amount integer);
                INSERT INTO orders VALUES (10, 1, 30), (11, 1, 12), (12, 3, 7);
                CREATE TABLE numbers AS SELECT n FROM generate_series(1, 50) AS n;
                CREATE TABLE payroll (name text, salary integer);
                CREATE PROCEDURE wipe_canary() LANGUAGE sql AS $$ DELETE FROM canary $$;
                -- Runs as its owner, a superuser, and EXECUTE is granted to PUBLIC by default.
                CREATE FUNCTION wipe_canary_as_owner() RETURNS integer LANGUAGE sql SECURITY DEFINER
                    AS $$ DELETE FROM canary; SELECT 0 $$;
                """
            )
            admin.execute(f"GRANT SELECT ON canary, orders, numbers TO {READER}")
            # dblink opens a session outside the read-only transaction: exercise it where it is installed.
            if admin.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'dblink'").fetchone():
                admin.execute("CREATE EXTENSION dblink")
        yield ToolDatabase(
            dsn=make_conninfo(SERVER, dbname=DATABASE, user=READER, password=READER_PASSWORD), admin_dsn=admin_dsn
        )
        _drop(server)


def _drop(server: psycopg.Connection) -> None:
    server.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    server.execute(f"DROP ROLE IF EXISTS {READER}")


@pytest.fixture
def untouched(tool_database: ToolDatabase) -> Iterator[None]:
    """After the test: the canary holds the same rows, no table was created, no program ran."""
    COPY_MARKER.unlink(missing_ok=True)
    yield
    with psycopg.connect(tool_database.admin_dsn, autocommit=True) as admin:
        assert admin.execute("SELECT id, name FROM canary ORDER BY id").fetchall() == CANARY
        assert admin.execute("SELECT to_regclass('newtable')").fetchone() == (None,)
    assert not COPY_MARKER.exists()


def run(
    tool_database: ToolDatabase,
    sql: str,
    *,
    params: dict[str, object] | None = None,
    timeout_ms: int = TIMEOUT_MS,
    max_rows: int = 100,
    check: bool = True,
) -> QueryResult:
    return run_select(tool_database.dsn, sql, params=params, timeout_ms=timeout_ms, max_rows=max_rows, check=check)


@pytest.mark.parametrize(("sql", "refusal"), ESCAPES)
def test_parser_refuses_escape(sql: str, refusal: str) -> None:
    with pytest.raises(SqlRefused, match=r"^refused: ") as refused:
        check_select(sql)
    assert refusal in str(refused.value)


@pytest.mark.parametrize("sql", ESCAPE_SQL)
def test_database_layers_alone_stop_escape(tool_database: ToolDatabase, untouched: None, sql: str) -> None:
    with contextlib.suppress(SqlToolError):  # refused or failed, or ran harmlessly: ``untouched`` checks which
        run(tool_database, sql, check=False)


@pytest.mark.parametrize("sql", ESCAPE_SQL)
def test_select_only_role_alone_stops_escape(tool_database: ToolDatabase, untouched: None, sql: str) -> None:
    """No parser, no read-only transaction, no cursor: several statements per call, each committed at once."""
    with psycopg.connect(tool_database.dsn, autocommit=True) as connection, contextlib.suppress(psycopg.Error):
        connection.execute(sql)


def test_read_only_transaction_stops_a_writing_function_the_parser_cannot_know(
    tool_database: ToolDatabase, untouched: None
) -> None:
    check_select("SELECT wipe_canary_as_owner()")  # a team's own function: nothing to refuse by name
    with pytest.raises(SqlRefused, match="tried to write in a read-only transaction"):
        run(tool_database, "SELECT wipe_canary_as_owner()")


def test_query_runs_read_only_under_the_timeout(tool_database: ToolDatabase) -> None:
    result = run(
        tool_database,
        "SELECT current_setting('transaction_read_only') AS read_only, current_setting('statement_timeout') AS timeout",
        timeout_ms=1500,
    )
    assert result == QueryResult(columns=["read_only", "timeout"], rows=[("on", "1500ms")], truncated=False)


def test_long_query_is_cancelled_with_a_clear_message(tool_database: ToolDatabase) -> None:
    with pytest.raises(SqlFailed, match=r"^the query ran longer than 300 ms and was cancelled$"):
        run(tool_database, "SELECT pg_sleep(5)", timeout_ms=300, check=False)


def test_table_the_role_cannot_read_is_refused_by_the_database(tool_database: ToolDatabase) -> None:
    with pytest.raises(
        SqlRefused, match=r"the tool's role lacks the privilege \(permission denied for table payroll\)"
    ):
        run(tool_database, "SELECT * FROM payroll")


def test_locking_read_is_refused_by_the_read_only_transaction(tool_database: ToolDatabase, untouched: None) -> None:
    with pytest.raises(SqlRefused, match="tried to write in a read-only transaction"):
        run(tool_database, "SELECT * FROM canary FOR UPDATE", check=False)


def test_unparseable_statement_is_refused(tool_database: ToolDatabase) -> None:
    with pytest.raises(SqlRefused, match=r"^refused: the statement does not parse as PostgreSQL \(Expecting \)"):
        run(tool_database, "SELECT (1")


def test_unreachable_database_fails_with_a_clear_message() -> None:
    with pytest.raises(SqlFailed, match=r"^could not connect to the team's database: "):
        run_select("postgresql://nobody@127.0.0.1:1/nothing", "SELECT 1", timeout_ms=TIMEOUT_MS, max_rows=1)


def test_rows_beyond_the_cap_are_cut_and_flagged(tool_database: ToolDatabase) -> None:
    result = run(tool_database, "SELECT n FROM numbers ORDER BY n", max_rows=10)
    assert result == QueryResult(columns=["n"], rows=[(n,) for n in range(1, 11)], truncated=True)


def test_exactly_the_cap_is_not_truncated(tool_database: ToolDatabase) -> None:
    result = run(tool_database, "SELECT n FROM numbers ORDER BY n", max_rows=50)
    assert len(result.rows) == 50 and not result.truncated


@pytest.mark.parametrize(
    ("sql", "columns", "rows"),
    [
        pytest.param(
            "SELECT c.name, o.amount FROM canary c JOIN orders o ON o.customer_id = c.id ORDER BY o.id",
            ["name", "amount"],
            [("alice", 30), ("alice", 12), ("charlie", 7)],
            id="join",
        ),
        pytest.param(
            "WITH totals AS (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id)"
            " SELECT c.name, t.total FROM totals t JOIN canary c ON c.id = t.customer_id ORDER BY c.name",
            ["name", "total"],
            [("alice", 42), ("charlie", 7)],
            id="reading-cte",
        ),
        pytest.param(
            "SELECT name FROM canary WHERE id = 1 UNION SELECT name FROM canary WHERE id = 3 ORDER BY name;",
            ["name"],
            [("alice",), ("charlie",)],
            id="union",
        ),
    ],
)
def test_reading_query_returns_its_rows(
    tool_database: ToolDatabase, sql: str, columns: list[str], rows: list[tuple[object, ...]]
) -> None:
    assert run(tool_database, sql) == QueryResult(columns=columns, rows=rows, truncated=False)


def test_fixed_query_returns_the_row_of_its_argument(tool_database: ToolDatabase) -> None:
    template = "SELECT id, name FROM canary WHERE id = %(customer_id)s"
    assert run(tool_database, template, params={"customer_id": 2}).rows == [(2, "bob")]


@pytest.mark.parametrize(
    ("template", "argument"),
    [
        ("SELECT id, name FROM canary WHERE id = %(customer_id)s", "1; DROP TABLE canary"),
        ("SELECT id, name FROM canary WHERE id = %(customer_id)s", "1 OR 1=1"),
        ("SELECT id, name FROM canary WHERE name = %(customer_name)s", "' OR '1'='1"),
        ("SELECT id, name FROM canary WHERE name = %(customer_name)s", "x'; DROP TABLE canary; --"),
    ],
)
def test_injection_in_an_argument_stays_data(
    tool_database: ToolDatabase, untouched: None, template: str, argument: str
) -> None:
    (name,) = check_fixed_query(template)
    try:
        rows = run(tool_database, template, params={name: argument}).rows
    except SqlFailed as failed:
        assert "invalid input syntax for type integer" in str(failed)
    else:
        assert rows == []


def test_fixed_query_lists_its_parameter_names() -> None:
    template = (
        "SELECT * FROM orders WHERE customer_id = %(customer_id)s AND amount > %(min_amount)s OR id = %(customer_id)s"
    )
    assert check_fixed_query(template) == ["customer_id", "min_amount"]


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ("DELETE FROM canary WHERE id = %(customer_id)s", "found DELETE"),
        ("SELECT * FROM canary WHERE id = %s", "positional placeholder %s"),
    ],
)
def test_fixed_query_refuses_a_template_that_is_not_a_named_select(template: str, refusal: str) -> None:
    with pytest.raises(SqlRefused, match=refusal):
        check_fixed_query(template)
