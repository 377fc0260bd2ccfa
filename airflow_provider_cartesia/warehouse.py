"""The export table on any engine with a common-sql ``DbApiHook``, written one transaction per batch.

Names are plain identifiers or refused, never escaped into SQL; errors name the driver's error class
and code, never its message (it may quote a row). docs/exporting.md explains each choice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, cached_property, partial
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_provider_cartesia.exceptions import CartesiaError, CartesiaWarehouseError, CartesiaWarehouseSchemaError
from airflow_provider_cartesia.rows import PRIMARY_KEY, Column, ColumnKind

if TYPE_CHECKING:
    from airflow.providers.common.sql.hooks.sql import DbApiHook

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
DEFAULT_CHUNK_SIZE = 5000
"""Rows per ``executemany`` call on drivers without COPY (all inside the batch's one transaction)."""
LOCK_WAIT_SECONDS = 300
"""MySQL/MariaDB: how long a writer waits for another export of the same batch (GET_LOCK) before failing the try."""
SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection waits for another process's lock on the file (the connection's extra ``timeout``)."""


class TableName(NamedTuple):
    """A validated table name: optional schema and the table itself, both plain identifiers."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def parse_table_name(table: str) -> TableName:
    """Split and validate ``table`` or ``schema.table``; anything but plain identifiers is refused."""
    if not isinstance(table, str):
        raise CartesiaWarehouseSchemaError(f"table must be a string, got {type(table).__name__}")
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        shown = table if len(table) <= 80 else table[:77] + "..."
        raise CartesiaWarehouseSchemaError(
            f"table {shown!r} is not a valid name: use 'table' or 'schema.table', each part letters, digits "
            "and '_', not starting with a digit, at most 63 characters",
            table=shown,
        )
    return TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0])


@dataclass(frozen=True)
class EngineProfile:
    """What the export needs to know about one SQL engine beyond what common-sql's dialect gives."""

    name: str
    types: Mapping[ColumnKind, str]
    """DDL type of each column kind."""
    adapt_time: Callable[[datetime], Any]
    """An aware UTC datetime as the driver takes it for a timestamp column."""
    fold: Callable[[str], str] | None = None
    """How the engine folds unquoted names: each name is folded, then quoted. None: quote reserved words only."""
    create_if_not_exists: bool = True
    table_options: str = ""
    stores_nul: bool = True
    """Whether text and JSON can hold U+0000; where not, it is written as U+FFFD."""
    begin_sql: str | None = None
    batch_lock_sql: str | None = None
    """Locks one batch, first in its transaction: ``(key,)``, or ``(key, LOCK_WAIT_SECONDS)`` with an unlock."""
    batch_unlock_sql: str | None = None
    """Releases, after the commit or rollback, a lock that outlives the transaction."""
    storage_engine_sql: str | None = None
    """``(schema or None, table)`` -> the table's storage engine and whether it has transactions (else refused)."""


_TEXT: dict[ColumnKind, str] = {"key": "TEXT", "text": "TEXT", "long_text": "TEXT", "integer": "INTEGER"}
ENGINES: dict[str, EngineProfile] = {
    "postgresql": EngineProfile(
        name="postgresql",
        types={**_TEXT, "timestamp": "TIMESTAMPTZ", "float": "DOUBLE PRECISION", "json": "JSONB"},
        adapt_time=lambda value: value,
        fold=str.lower,
        stores_nul=False,
        batch_lock_sql="SELECT pg_advisory_xact_lock(%s)",
    ),
    "mysql": EngineProfile(
        name="mysql",
        types={
            **_TEXT,
            "key": "VARCHAR(255) COLLATE utf8mb4_bin",  # ids stay case sensitive
            "text": "VARCHAR(255)",
            "long_text": "MEDIUMTEXT",
            "timestamp": "DATETIME(6)",  # holding UTC: MySQL has no zoned type and TIMESTAMP ends in 2038
            "float": "DOUBLE",
            "json": "JSON",
        },
        adapt_time=lambda value: value.replace(tzinfo=None),
        fold=str,
        table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        batch_lock_sql="SELECT GET_LOCK(%s, %s)",
        batch_unlock_sql="SELECT RELEASE_LOCK(%s)",
        storage_engine_sql="SELECT t.ENGINE, e.TRANSACTIONS FROM information_schema.TABLES t "
        "LEFT JOIN information_schema.ENGINES e ON e.ENGINE = t.ENGINE "
        "WHERE t.TABLE_SCHEMA = COALESCE(%s, DATABASE()) AND t.TABLE_NAME = %s",
    ),
    "sqlite": EngineProfile(
        name="sqlite",
        types={**_TEXT, "timestamp": "TEXT", "float": "REAL", "json": "TEXT"},
        adapt_time=lambda value: value.isoformat(timespec="microseconds"),  # sortable, read by date functions
        fold=str,
        begin_sql="BEGIN IMMEDIATE",
    ),
    "generic": EngineProfile(
        name="generic",
        types={
            "key": "VARCHAR(255)",
            "text": "VARCHAR(1024)",
            "long_text": "VARCHAR(65535)",
            "timestamp": "TIMESTAMP WITH TIME ZONE",
            "float": "DOUBLE PRECISION",
            "integer": "INTEGER",
            "json": "VARCHAR(65535)",
        },
        adapt_time=lambda value: value,
        create_if_not_exists=False,
        stores_nul=False,
    ),
}
_ENGINE_ALIASES = {"postgres": "postgresql", "redshift": "generic", "mariadb": "mysql"}


def engine_profile(dialect_name: str | None) -> EngineProfile:
    """The profile for a common-sql dialect name (``postgresql``, ``mysql``, ``sqlite``, ...); generic otherwise."""
    name = (dialect_name or "").lower()
    return ENGINES.get(_ENGINE_ALIASES.get(name, name), ENGINES["generic"])


def get_warehouse_hook(conn_id: str) -> DbApiHook:
    """The DB-API hook of Airflow connection ``conn_id`` (any common-sql hook; SQLite needs no provider)."""
    # Imported here: common-sql and the connection lookup cost more than parsing a DAG should pay.
    from airflow.providers.common.sql.hooks.sql import DbApiHook

    from airflow_provider_cartesia.compat import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if is_sqlite_connection(conn.conn_type, conn.host, conn.port) and (
        conn.conn_type == "generic" or not _sqlite_provider_installed()
    ):
        return _embedded_sqlite_hook_class()(conn_id)
    hook, failure = None, ""
    try:
        hook = conn.get_hook()
    except Exception as exc:  # unknown type, provider missing or broken, a hook that refuses the connection
        failure = f" ({type(exc).__name__})"
    if not isinstance(hook, DbApiHook):
        generic = (
            " A connection stored as 'generic' was made with a type whose provider was not installed where it was "
            "created: install the database's provider (apache-airflow-providers-postgres, -mysql, ...) and set the "
            "type again, or, for SQLite, set the host to the database file's absolute path."
            if conn.conn_type == "generic"
            else ""
        )
        raise CartesiaWarehouseSchemaError(
            f"Connection '{conn_id}' (type {conn.conn_type!r}) has no SQL (DB-API) hook{failure}; use a connection "
            f"of a SQL database such as postgres, mysql or sqlite.{generic}"
        )
    return hook


def is_sqlite_connection(conn_type: str | None, host: str | None, port: int | None = None) -> bool:
    """``sqlite``, or ``generic`` (``--conn-type sqlite`` without the provider) with an absolute path, no port."""
    return conn_type == "sqlite" or (conn_type == "generic" and bool(host) and os.path.isabs(host or "") and not port)


def _sqlite_provider_installed() -> bool:
    return importlib.util.find_spec("airflow.providers.sqlite") is not None


@cache
def _embedded_sqlite_hook_class() -> type[DbApiHook]:
    """SQLite through the standard library: Airflow does not install the sqlite provider."""
    import sqlite3

    from airflow.providers.common.sql.hooks.sql import DbApiHook  # defined on first use: common-sql costs an import

    class EmbeddedSqliteHook(DbApiHook):
        conn_name_attr = "sqlite_conn_id"
        default_conn_name = "sqlite_default"
        conn_type = "sqlite"
        hook_name = "SQLite (embedded)"
        _placeholder = "?"

        def get_conn(self) -> Any:
            path, timeout = self.connection.host or "", self.connection.extra_dejson.get("timeout", SQLITE_BUSY_TIMEOUT)
            if path != ":memory:" and not os.path.isabs(path):  # a relative path lands in the worker's directory
                raise CartesiaWarehouseSchemaError(
                    f"Connection '{self.get_conn_id()}': the host of a sqlite connection must be the database "
                    f"file's absolute path, got {path!r}"
                )
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout < 86400:
                raise CartesiaWarehouseSchemaError(
                    f"Connection '{self.get_conn_id()}': the extra 'timeout' is how many seconds to wait for "
                    f"another process's lock on the database file, a number from 0, got {timeout!r}"
                )
            return sqlite3.connect(path, timeout=timeout)

        def get_uri(self) -> str:
            return f"sqlite:///{self.connection.host or ''}"

    return EmbeddedSqliteHook


def table_dataset(hook: DbApiHook, table: TableName) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of the table, from the hook's OpenLineage database info if it has one."""
    conn = hook.connection
    info = hook.get_openlineage_database_info(conn)
    if info is None and is_sqlite_connection(conn.conn_type, conn.host, conn.port):  # SqliteHook gives none
        return f"sqlite://{conn.host}", str(table)
    if info is None:
        return f"{conn.conn_type}://{hook.get_openlineage_authority_part(conn)}", str(table)
    namespace = f"{info.scheme}://{info.authority}" if info.authority else info.scheme
    schema = table.schema or hook.get_openlineage_default_schema() or conn.schema
    return namespace, ".".join(p for p in (info.database, schema, table.name) if p)


class WarehouseTable:
    """The export table on one engine: quoted names and every statement the writer runs.

    :param hook: the warehouse's DB-API hook; its dialect quotes the names.
    :param table: ``table`` or ``schema.table`` (parsed here if not parsed yet).
    :param columns: the export's columns, in row order.
    """

    def __init__(self, hook: DbApiHook, table: TableName | str, columns: Sequence[Column]) -> None:
        self.hook = hook
        self.name = table if isinstance(table, TableName) else parse_table_name(table)
        self.columns = tuple(columns)

    @cached_property
    def engine(self) -> EngineProfile:
        """The profile of the hook's dialect; Redshift behind a PostgresHook (no JSONB, no COPY) is generic."""
        hook = self.hook
        try:
            redshift = hook.conn_type == "postgres" and hook.connection.extra_dejson.get("redshift")
            return engine_profile("redshift" if redshift else hook.dialect_name)
        except Exception:  # a hook that cannot tell (no connection, no SQLAlchemy URL) gets standard SQL
            return ENGINES["generic"]

    def quote(self, identifier: str) -> str:
        """``identifier`` (validated) quoted by the hook's dialect; see :attr:`EngineProfile.fold`."""
        dialect = self.hook.dialect
        if self.engine.fold is not None:
            return dialect.escape_word_format.format(self.engine.fold(identifier))
        from sqlalchemy.sql.compiler import RESERVED_WORDS  # only engines without a profile pay this import

        quoted = dialect.escape_word(identifier)
        if quoted == identifier and identifier.lower() in RESERVED_WORDS:
            quoted = dialect.escape_word_format.format(identifier)
        return quoted

    @cached_property
    def qualified(self) -> str:
        """The quoted, possibly schema-qualified table name."""
        return ".".join(self.quote(p) for p in self.name if p)

    def create_sql(self) -> str:
        lines = [
            f"{self.quote(c.name)} {self.engine.types[c.kind]}{' NOT NULL' if c.name in PRIMARY_KEY else ''}"
            for c in self.columns
        ]
        lines.append(f"PRIMARY KEY ({', '.join(self.quote(k) for k in PRIMARY_KEY)})")
        exists = "IF NOT EXISTS " if self.engine.create_if_not_exists else ""
        body = ",\n  ".join(lines)
        return f"CREATE TABLE {exists}{self.qualified} (\n  {body}\n){self.engine.table_options}"

    def add_column_sql(self, column: Column) -> str:
        return f"ALTER TABLE {self.qualified} ADD COLUMN {self.quote(column.name)} {self.engine.types[column.kind]}"

    # Every statement below holds validated, quoted identifiers and placeholders, never a value: noqa S608.

    def probe_sql(self) -> str:
        """A query that reads no row but describes every column (and fails if the table is missing)."""
        return f"SELECT * FROM {self.qualified} WHERE 1 = 0"  # noqa: S608

    def delete_sql(self) -> str:
        return f"DELETE FROM {self.qualified} WHERE {self.quote(PRIMARY_KEY[0])} = {self.hook.placeholder}"  # noqa: S608

    def insert_sql(self, method: str = "executemany") -> str:
        """The bulk statement of an insert method: ``copy``, ``execute_values`` (one ``%s``) or ``executemany``."""
        columns = ", ".join(self.quote(c.name) for c in self.columns)
        if method == "copy":
            return f"COPY {self.qualified} ({columns}) FROM STDIN"
        marks = ", ".join([str(self.hook.placeholder)] * len(self.columns))
        values = "%s" if method == "execute_values" else f"({marks})"
        return f"INSERT INTO {self.qualified} ({columns}) VALUES {values}"  # noqa: S608

    def batch_lock_key(self, batch_id: str) -> int | str:
        """A key for the engine's lock on one batch of this table: a signed 64-bit number or a short name."""
        digest = hashlib.blake2b(f"{self.qualified}\x00{batch_id}".encode(), digest_size=8).digest()
        if self.engine.name == "postgresql":
            return int.from_bytes(digest, "big", signed=True)
        return f"cartesia_export:{digest.hex()}"


def describe_db_error(exc: BaseException) -> tuple[str, str | None, str]:
    """``(exception class, SQLSTATE / MySQL error number / SQLite error name, psycopg's diagnostics)`` of a
    driver error: fields that never hold row values."""
    kind = type(exc).__name__
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or getattr(exc, "sqlite_errorname", None)
    if exc.args and isinstance(exc.args[0], int):  # MySQL drivers: the error number says more than its SQLSTATE
        code = str(exc.args[0])
    diag = getattr(exc, "diag", None)
    details = [
        f"{label} {value}"
        for label in ("constraint", "column", "table")
        if (value := getattr(diag, f"{label}_name", None)) and _IDENTIFIER.fullmatch(value)
    ]
    return kind, (str(code) if code is not None else None), ", ".join(details)


# PostgreSQL SQLSTATEs: a connection failure (class 08), a deadlock or serialization failure, a lock
# or statement timeout, a server shutting down or out of connections or memory.
_TRANSIENT_SQLSTATES = frozenset(
    {"40001", "40P01", "40003", "55P03", "57014", "57P01", "57P02", "57P03", "57P05", "53200", "53300"}
)
# MySQL/MariaDB error numbers: lock wait timeout, deadlock, server gone or shutting down, connection
# lost, killed or refused for load, query interrupted or over its time limit, network timeouts.
_TRANSIENT_MYSQL_ERRORS = frozenset(
    {"1040", "1053", "1158", "1159", "1160", "1161", "1205", "1213", "1317", "1927", "2002", "2003", "2006"}
    | {"2013", "2055", "3024", "4031"}
)
_WRITE_CONFLICTS = frozenset({"40001", "40P01", "1213"})
"""Deadlock and serialization failures: the whole transaction is tried again (with fresh rows)."""
WRITE_CONFLICT_RETRIES = 8
"""Writers that deadlocked each other part after a short random pause, longer at each try."""


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether a database error may pass by itself (a lock, a timeout, a lost connection; unknown drivers: no)."""
    _, code, _ = describe_db_error(exc)
    if code is not None:
        if code.startswith("SQLITE_"):
            return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
        return code.startswith("08") or code in _TRANSIENT_SQLSTATES or code in _TRANSIENT_MYSQL_ERRORS
    # psycopg and psycopg2 raise these without a SQLSTATE when the connection itself is gone.
    module = type(exc).__module__.split(".")[0]
    return module in ("psycopg", "psycopg2") and type(exc).__name__ in ("OperationalError", "InterfaceError")


def _ddl_error(table: TableName, action: str, exc: BaseException, hint: str = "") -> CartesiaWarehouseError:
    """A failure of DDL or of reading the table's shape (no row value involved: the driver's message is kept)."""
    kind, code, _ = describe_db_error(exc)
    what = f"{kind}{f' {code}' if code else ''}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    if is_transient_db_error(exc):
        return CartesiaWarehouseError(
            f"Could not {action} table {table} for now: {what}. This is a transient database error (a lock held "
            "by another session, a timeout, a lost connection): the task's retries apply",
            table=str(table),
            kind=kind,
            code=code,
        )
    return CartesiaWarehouseSchemaError(
        f"Could not {action}{hint} table {table}: {what}", table=str(table), kind=kind, code=code
    )


def _write_error(
    table: TableName, batch_id: str, exc: BaseException, rolled_back: bool, *, during_commit: bool = False
) -> CartesiaWarehouseError:
    kind, code, details = describe_db_error(exc)
    what = kind + (f" {code}" if code else "") + (f" ({details})" if details else "")
    kept = (
        "the commit's outcome is unknown, so the table holds either the batch's previous rows or all its new ones, "
        "never a mix; run the export again"
        if during_commit
        else f"the transaction was {'rolled back' if rolled_back else 'not committed'}, so the batch's previous "
        "rows are intact"
    )
    retries = (
        " This error may pass by itself (a lock, a timeout, a lost connection): the task's retries apply."
        if is_transient_db_error(exc)
        else ""
    )
    return CartesiaWarehouseError(
        f"Writing batch {batch_id} to table {table} failed: {what}; {kept}. The database's message is not shown "
        f"because it may quote row values (phone numbers, metadata).{retries}",
        table=str(table),
        batch_id=batch_id,
        kind=kind,
        code=code,
    )


class WarehouseWriter:
    """Writes export rows, batch by batch, over one DB-API connection (a context manager).

    :param hook: the warehouse's DB-API hook (see :func:`get_warehouse_hook`).
    :param table: ``table`` or ``schema.table`` (a :class:`TableName` or text to validate).
    :param columns: the export's columns, in the order of the row tuples.
    :param chunk_size: rows per ``executemany`` call where there is no COPY.
    """

    def __init__(
        self,
        hook: DbApiHook,
        table: TableName | str,
        columns: Sequence[Column],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.table = WarehouseTable(hook, table, columns)
        self.engine = self.table.engine
        """The engine's profile; its ``adapt_time`` is what :func:`~airflow_provider_cartesia.rows.batch_rows` needs."""
        self.hook = hook
        self.chunk_size = chunk_size
        self._conn: Any = None

    def __enter__(self) -> WarehouseWriter:
        self.connection  # noqa: B018 - connect now, so that a bad connection fails before any work
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connection(self) -> Any:
        """The one DB-API connection of this writer, autocommit off."""
        if self._conn is None:
            conn = self.hook.get_conn()
            if getattr(self.hook, "supports_autocommit", False):
                self.hook.set_autocommit(conn, False)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a connection killed mid-write may not close cleanly
                conn.close()

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        cur = self.connection.cursor()
        try:
            yield cur
        finally:
            with contextlib.suppress(Exception):  # the cursor of a dead connection may fail to close
                cur.close()

    def _rollback(self) -> bool:
        try:
            self.connection.rollback()
            return True
        except Exception as exc:
            self.hook.log.warning("Rollback failed (%s); the server discards the open transaction", type(exc).__name__)
            return False

    def _query(self, sql: str, params: Sequence[Any] = ()) -> tuple[list[str], list[Any]]:
        """Column names and rows of a read-only query; the transaction it opened is rolled back."""
        try:
            with self._cursor() as cur:
                cur.execute(sql, params)
                return [str(d[0]) for d in cur.description or ()], cur.fetchall()
        finally:
            self._rollback()

    def ensure_table(self, *, create: bool = True, add_missing_columns: bool = False) -> list[str]:
        """Create the table if missing (``create``), check its columns, add missing ones (``add_missing_columns``);
        returns the columns added. Errors: transient, or a schema error that says what to change."""
        name, table = self.table.name, self.table
        try:
            existing = self._query(table.probe_sql())[0]
        except Exception as exc:
            if not create or is_transient_db_error(exc):
                raise _ddl_error(name, "read", exc, " (does it exist? set create_table=True to create it)") from None
            create_error = None
            try:
                self._run_ddl(table.create_sql(), "create")
            except CartesiaWarehouseSchemaError as error:  # or another writer created it at the same moment
                create_error = error
            try:
                existing = self._query(table.probe_sql())[0]
            except Exception as exc2:
                raise create_error or _ddl_error(name, "read the newly created", exc2) from None
        self._check_storage_engine()
        have = {c.casefold() for c in existing}
        missing = [c for c in table.columns if c.name.casefold() not in have]
        if missing and not add_missing_columns:
            listed = ", ".join(f"{c.name} ({self.engine.types[c.kind]})" for c in missing)
            raise CartesiaWarehouseSchemaError(
                f"Table {name} lacks the columns {listed}. Add them, or set add_missing_columns=True to have "
                "them added.",
                table=str(name),
            )
        for column in missing:
            self._run_ddl(table.add_column_sql(column), f"add column {column.name} to")
            self.hook.log.info("Added column %s to table %s", column.name, name)
        return [c.name for c in missing]

    def _check_storage_engine(self) -> None:
        """MySQL/MariaDB: a table without transactions (MyISAM, Aria) would keep half a batch after a failure."""
        if self.engine.storage_engine_sql is None:
            return
        try:
            found = self._query(self.engine.storage_engine_sql, tuple(self.table.name))[1]
        except Exception as exc:
            raise _ddl_error(self.table.name, "read the storage engine of", exc) from None
        engine, transactions = found[0] if found else (None, None)
        if engine is not None and str(transactions).upper() != "YES":
            raise CartesiaWarehouseSchemaError(
                f"Table {self.table.name} uses the {engine} storage engine, which has no transactions: a failed "
                "export would leave half a batch behind. Convert it (ALTER TABLE ... ENGINE=InnoDB) or export "
                "into a new table (the export creates its tables with ENGINE=InnoDB)",
                table=str(self.table.name),
            )

    def _run_ddl(self, sql: str, action: str) -> None:
        try:
            with self._cursor() as cur:
                cur.execute(sql)
                self.connection.commit()
        except Exception as exc:
            self._rollback()
            raise _ddl_error(self.table.name, action, exc) from None

    def replace_batch(
        self, batch_id: str, rows: Iterable[Sequence[Any]] | Callable[[], Iterable[Sequence[Any]]]
    ) -> int:
        """Replace every row of ``batch_id`` by ``rows`` in one transaction (rolled back on any error); returns
        the rows written. Given a callable that makes the rows, a deadlock is tried again after a short pause."""
        tries = 1 + (WRITE_CONFLICT_RETRIES if callable(rows) else 0)
        attempt = 1
        while True:
            try:
                return self._replace_once(batch_id, rows() if callable(rows) else rows)
            except CartesiaWarehouseError as error:
                if attempt >= tries or error.code not in _WRITE_CONFLICTS:
                    raise
                log = "Write of batch %s to %s met a concurrent write (%s %s); trying again (%d of %d)"
                self.hook.log.warning(log, batch_id, self.table.name, error.kind, error.code, attempt, tries - 1)
                time.sleep(random.uniform(0, 0.05 * attempt))
                attempt += 1

    def _replace_once(self, batch_id: str, rows: Iterable[Sequence[Any]]) -> int:
        engine, committing = self.engine, False
        lock_key = self.table.batch_lock_key(batch_id) if engine.batch_lock_sql else None
        with self._cursor() as cur:
            try:
                if engine.begin_sql:
                    cur.execute(engine.begin_sql)
                if lock_key is not None:
                    self._lock_batch(cur, batch_id, lock_key)
                cur.execute(self.table.delete_sql(), (batch_id,))
                written = self._insert(cur, rows if engine.stores_nul else without_nul(rows, self.table.columns))
                committing = True
                self.connection.commit()
            except Exception as exc:
                rolled_back = self._rollback()
                if isinstance(exc, CartesiaError):
                    raise
                error = _write_error(self.table.name, batch_id, exc, rolled_back, during_commit=committing)
                what = f"{error.kind} {error.code or ''}".rstrip()
                state = "rolled back" if rolled_back else "not committed"
                self.hook.log.warning("Write of batch %s to %s failed (%s); %s", batch_id, self.table.name, what, state)
                raise error from None
            finally:
                if lock_key is not None and engine.batch_unlock_sql:
                    with contextlib.suppress(Exception):  # a lost connection has released it already
                        cur.execute(engine.batch_unlock_sql, (lock_key,))
                        cur.fetchall()
        return written

    def _lock_batch(self, cur: Any, batch_id: str, key: int | str) -> None:
        """Wait for other writers of this batch into this table (see :meth:`replace_batch`)."""
        named = self.engine.batch_unlock_sql is not None  # a named lock (GET_LOCK) takes a wait limit
        cur.execute(self.engine.batch_lock_sql, (key, LOCK_WAIT_SECONDS) if named else (key,))
        got = cur.fetchall()
        if named and (not got or got[0][0] != 1):  # GET_LOCK: 0 timed out, NULL failed
            raise CartesiaWarehouseError(
                f"Writing batch {batch_id} to table {self.table.name} waited {LOCK_WAIT_SECONDS} s for another "
                "export of the same batch to finish, and gave up; nothing was written. The task's retries apply",
                table=str(self.table.name),
                batch_id=batch_id,
                kind="LockTimeout",
            )

    @property
    def insert_method(self) -> str:
        """``copy`` (psycopg 3), ``execute_values`` (psycopg2: postgres providers before 6.3) or ``executemany``."""
        module = type(self.connection).__module__.split(".")[0]
        if module == "psycopg" and self.engine.name == "postgresql":  # not Redshift: it has no COPY FROM STDIN
            return "copy"
        return "execute_values" if module == "psycopg2" else "executemany"

    def _insert(self, cur: Any, rows: Iterable[Sequence[Any]]) -> int:
        method = self.insert_method
        sql, send, written = self.table.insert_sql(method), cur.executemany, 0
        if method == "copy":
            with cur.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
                    written += 1
            return written
        if method == "execute_values":
            from psycopg2.extras import execute_values  # psycopg2 is imported only where it is the driver

            send = partial(execute_values, cur, page_size=1000)
        iterator = iter(rows)
        while chunk := list(islice(iterator, self.chunk_size)):
            send(sql, chunk)
            written += len(chunk)
        return written


_NUL = "\x00"
_JSON_NUL = "\\u0000"
_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")  # \u0000 after an even run of backslashes
NUL_REPLACEMENT = "\ufffd"
"""What U+0000 becomes where the engine cannot store it (PostgreSQL): U+FFFD, Unicode's replacement character."""


def without_nul(rows: Iterable[Sequence[Any]], columns: Sequence[Column]) -> Iterator[Sequence[Any]]:
    """``rows`` with every U+0000 in text, and every ``\\u0000`` in JSON text, written as U+FFFD (for PostgreSQL).

    Rows without one pass unchanged (the same object).
    """
    text = tuple((i, c.kind == "json") for i, c in enumerate(columns) if c.kind in ("key", "text", "long_text", "json"))
    for row in rows:
        for i, _ in text:  # a plain loop: about 1 ms per 5,000 rows, a fraction of joining or regex scans
            value = row[i]
            if value and (_NUL in value or _JSON_NUL in value):
                fixed = list(row)
                for j, is_json in text:
                    if isinstance(value := fixed[j], str):
                        value = _JSON_NUL_ESCAPE.sub("\\1" + NUL_REPLACEMENT, value) if is_json else value
                        fixed[j] = value.replace(_NUL, NUL_REPLACEMENT)
                yield tuple(fixed)
                break
        else:
            yield row
