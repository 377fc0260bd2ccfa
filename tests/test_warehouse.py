"""The warehouse layer on real SQLite, PostgreSQL and MariaDB: names, DDL, atomic replace, failures.

Rows come from :func:`airflow_provider_cartesia.rows.batch_rows` over hand-built batches; the
operator's end-to-end tests (with the Cartesia simulator) are in test_transfer_call_batch_to_warehouse.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from warehouse_engines import CONN_ID, ENGINES, Engine, json_value, make_engine, utc_value

from airflow_provider_cartesia.exceptions import CartesiaWarehouseError, CartesiaWarehouseSchemaError
from airflow_provider_cartesia.models import CallBatch
from airflow_provider_cartesia.rows import RECIPIENT_COLUMNS, batch_rows, export_columns
from airflow_provider_cartesia.warehouse import (
    WarehouseTable,
    WarehouseWriter,
    describe_db_error,
    engine_profile,
    get_warehouse_hook,
    parse_table_name,
)

T0 = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
COLUMNS = "information_schema.columns"
EXPORTED = datetime(2026, 6, 2, 8, 30, tzinfo=timezone.utc)

HOSTILE_METADATA = {
    "name": 'Zoë O\'Brien "the 3rd" \\ back\\slash',
    "emoji": "📞✅ 日本語 עברית",
    "nested": {"a": [1, 2.5, None, True, {"deep": {"deeper": ["x", {"y": "z"}]}}], "empty": {}, "list": []},
    "control": "tab\there\nnewline\r\n",
    "sql": "'); DROP TABLE x; --",
    "big": 12345678901234567,
    "float": 0.1,
    "percent": "100% %s %(x)s ?",
}


def phone(i: int) -> str:
    return f"+1415777{i:04d}"


def make_batch(
    batch_id: str,
    n: int,
    *,
    status: str = "completed",
    end_reason: str | None = "agent_hangup",
    metadata: Any = None,
    name: str = "Renewals",
) -> CallBatch:
    recipients = [
        {
            "id": f"{batch_id}_r{i:05d}",
            "to_number": phone(i),
            "status": status,
            "created_at": (T0 + timedelta(seconds=i)).isoformat(),
            "agent_call_id": f"ac_{batch_id}_{i}",
            "end_reason": end_reason,
            "metadata": metadata if metadata is not None else {"customer_id": f"cust_{i}", "secret": f"meta-{i}"},
        }
        for i in range(n)
    ]
    return CallBatch.model_validate(
        {
            "id": batch_id,
            "name": name,
            "agent_id": "agent_1",
            "status": "completed",
            "created_at": T0.isoformat(),
            "last_updated_at": T0.isoformat(),
            "recipients": recipients,
        }
    )


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from make_engine(request.param, request, tmp_path)


def writer_for(engine: Engine, table: str | None = None, **kwargs: Any) -> WarehouseWriter:
    return WarehouseWriter(get_warehouse_hook(CONN_ID), table or engine.table, RECIPIENT_COLUMNS, **kwargs)


def rows_of(writer: WarehouseWriter, batch: CallBatch) -> Iterator[tuple[Any, ...]]:
    return batch_rows(batch, exported_at=EXPORTED, adapt_time=writer.engine.adapt_time)


# -- names (no database) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("recipients", (None, "recipients")),
        ("analytics.recipients", ("analytics", "recipients")),
        ("_t1", (None, "_t1")),
        ("Mixed_Case", (None, "Mixed_Case")),
    ],
)
def test_valid_table_names(table: str, expected: tuple[str | None, str]) -> None:
    assert tuple(parse_table_name(table)) == expected


@pytest.mark.parametrize(
    "table",
    [
        "t; DROP TABLE users",
        "t--",
        '"quoted"',
        "`t`",
        "a.b.c",
        ".t",
        "t.",
        "",
        "1abc",
        "t name",
        "tåble",
        "t\x00",
        "x" * 64,
        "s.t WHERE 1=1",
        "t/*",
    ],
)
def test_hostile_table_names_are_refused(table: str) -> None:
    with pytest.raises(CartesiaWarehouseSchemaError, match="not a valid name"):
        parse_table_name(table)


def test_engine_profiles_by_dialect_name() -> None:
    assert engine_profile("postgresql").types["json"] == "JSONB"
    assert engine_profile("postgresql").types["timestamp"] == "TIMESTAMPTZ"
    assert engine_profile("mysql").types["json"] == "JSON"
    assert engine_profile("mariadb").name == "mysql"
    assert engine_profile("sqlite").types["timestamp"] == "TEXT"
    assert engine_profile("snowflake").name == "generic"
    assert engine_profile(None).name == "generic"


def test_db_error_description_never_includes_the_message() -> None:
    class FakeDriverError(Exception):
        sqlstate = "23502"

        class diag:  # mimics psycopg's Diagnostic attribute names
            constraint_name = None
            column_name = "recipient_id"
            table_name = "t"

    exc = FakeDriverError('null value in column "recipient_id" violates not-null: Failing row contains (+14155550000)')
    kind, code, details = describe_db_error(exc)
    assert (kind, code, details) == ("FakeDriverError", "23502", "column recipient_id, table t")
    mysql_like = Exception(1062, "Duplicate entry '+14155550000' for key 'PRIMARY'")
    assert describe_db_error(mysql_like) == ("Exception", "1062", "")


def _driver_errors() -> list[tuple[BaseException, bool]]:
    import MySQLdb
    import psycopg
    import psycopg.errors as pg

    return [
        (pg.DeadlockDetected(), True),
        (pg.SerializationFailure(), True),
        (pg.LockNotAvailable(), True),  # lock_timeout
        (pg.QueryCanceled(), True),  # statement_timeout
        (pg.AdminShutdown(), True),
        (pg.TooManyConnections(), True),
        (psycopg.OperationalError("the connection is lost"), True),  # no SQLSTATE: the connection is gone
        (pg.UndefinedTable(), False),
        (pg.InsufficientPrivilege(), False),
        (pg.UniqueViolation(), False),
        (pg.UntranslatableCharacter(), False),
        (MySQLdb.OperationalError(1205, "Lock wait timeout exceeded"), True),
        (MySQLdb.OperationalError(1213, "Deadlock found"), True),
        (MySQLdb.OperationalError(2006, "server has gone away"), True),
        (MySQLdb.OperationalError(2013, "Lost connection"), True),
        (MySQLdb.ProgrammingError(1146, "Table doesn't exist"), False),
        (MySQLdb.OperationalError(1142, "command denied"), False),
        (MySQLdb.IntegrityError(1062, "Duplicate entry"), False),
        (ValueError("not a database error"), False),
    ]


def test_transient_database_errors_are_told_from_lasting_ones() -> None:
    from airflow_provider_cartesia.warehouse import is_transient_db_error

    for exc, transient in _driver_errors():
        assert is_transient_db_error(exc) is transient, (type(exc).__name__, exc.args)


def test_sqlite_busy_and_locked_are_transient(tmp_path: Path) -> None:
    import sqlite3

    from airflow_provider_cartesia.warehouse import is_transient_db_error

    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    other = sqlite3.connect(path, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            other.execute("SELECT * FROM t")
        with pytest.raises(sqlite3.OperationalError) as missing:
            sqlite3.connect(":memory:").execute("SELECT * FROM no_such_table")
    finally:
        other.close()
        holder.close()
    assert is_transient_db_error(busy.value)
    assert not is_transient_db_error(missing.value)


# -- on each engine ---------------------------------------------------------------------------


def test_create_export_and_read_back(engine: Engine) -> None:
    batch = make_batch("acb_one", 25)
    with writer_for(engine) as writer:
        assert writer.insert_method == engine.bulk_method
        assert writer.ensure_table(create=True) == []
        assert writer.replace_batch("acb_one", rows_of(writer, batch)) == 25
    rows = engine.rows(columns=", ".join(c.name for c in RECIPIENT_COLUMNS))
    assert len(rows) == 25
    first = dict(zip([c.name for c in RECIPIENT_COLUMNS], rows[0], strict=True))
    assert first["batch_id"] == "acb_one"
    assert first["recipient_id"] == "acb_one_r00000"
    assert first["batch_name"] == "Renewals"
    assert first["to_number"] == phone(0)
    assert first["status"] == "completed"
    assert first["end_reason"] == "agent_hangup"
    assert first["error_message"] is None
    assert utc_value(first["created_at"]) == T0
    assert utc_value(first["exported_at"]) == EXPORTED
    assert json_value(first["metadata"]) == {"customer_id": "cust_0", "secret": "meta-0"}
    if engine.name == "postgres":
        assert first["created_at"].tzinfo is not None, "PostgreSQL stores TIMESTAMPTZ"


def test_re_export_replaces_the_batch_without_duplicates(engine: Engine) -> None:
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_a", rows_of(writer, make_batch("acb_a", 30, status="queued", end_reason=None)))
        writer.replace_batch("acb_b", rows_of(writer, make_batch("acb_b", 5)))
        # The batch moved on: every recipient finished.
        writer.replace_batch("acb_a", rows_of(writer, make_batch("acb_a", 30, status="failed", end_reason="dial_busy")))
        writer.replace_batch("acb_a", rows_of(writer, make_batch("acb_a", 30, status="failed", end_reason="dial_busy")))
    assert engine.count("acb_a") == 30
    assert engine.count("acb_b") == 5
    statuses = engine.query(f"SELECT DISTINCT status, end_reason FROM {engine.table} WHERE batch_id = ?", ("acb_a",))
    assert statuses == [("failed", "dial_busy")]
    keys = engine.query(f"SELECT COUNT(DISTINCT recipient_id) FROM {engine.table}")
    assert keys[0][0] == 35


def test_metadata_round_trips_exactly(engine: Engine) -> None:
    batch = make_batch("acb_meta", 3, metadata=HOSTILE_METADATA)
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_meta", rows_of(writer, batch))
    stored = engine.rows(columns="metadata")
    assert [json_value(v) for (v,) in stored] == [HOSTILE_METADATA] * 3
    # Not only equal as parsed JSON: the same text of every string value, byte for byte.
    assert json_value(stored[0][0])["emoji"].encode() == HOSTILE_METADATA["emoji"].encode()


def test_failure_in_the_middle_leaves_previous_rows(
    engine: Engine, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_x", rows_of(writer, make_batch("acb_x", 40, status="queued")))
        before = engine.rows()

        def poisoned() -> Iterator[tuple[Any, ...]]:
            for i, row in enumerate(rows_of(writer, make_batch("acb_x", 40, status="completed"))):
                # Row 20 has no recipient id: the primary key refuses it; the row holds a phone number.
                yield (row[0], None, *row[2:]) if i == 20 else row

        caplog.set_level(logging.DEBUG)
        with pytest.raises(CartesiaWarehouseError) as caught:
            writer.replace_batch("acb_x", poisoned())
        # The same writer recovers for the next batch.
        writer.replace_batch("acb_y", rows_of(writer, make_batch("acb_y", 2)))
    error = caught.value
    assert error.batch_id == "acb_x"
    assert error.kind in {"NotNullViolation", "IntegrityError", "OperationalError"}
    assert "acb_x" in str(error) and engine.table in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err  # Airflow's structlog prints; stdlib logging is captured
    assert "Write of batch acb_x" in logs and "rolled back" in logs, "the log is captured"
    for leak in (phone(20), "+1415777", "meta-20", "cust_20"):
        assert leak not in str(error)
        assert leak not in logs
    assert engine.rows() == before + engine.rows()[len(before) :]  # acb_x untouched, acb_y appended
    assert engine.count("acb_x") == 40
    assert {s for (s,) in engine.query(f"SELECT status FROM {engine.table} WHERE batch_id = ?", ("acb_x",))} == {
        "queued"
    }


@pytest.mark.parametrize("engine", ["postgres", "mysql"], indirect=True)
def test_connection_killed_mid_write_leaves_previous_rows(engine: Engine) -> None:
    with writer_for(engine, chunk_size=200) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_k", rows_of(writer, make_batch("acb_k", 1000, status="queued")))
        conn = writer.connection

        def killer() -> Iterator[tuple[Any, ...]]:
            for i, row in enumerate(rows_of(writer, make_batch("acb_k", 1000, status="completed"))):
                if i == 600:
                    engine.kill(conn)
                yield row

        with pytest.raises(CartesiaWarehouseError) as caught:
            writer.replace_batch("acb_k", killer())
    assert caught.value.kind in {"AdminShutdown", "OperationalError", "InterfaceError"}
    assert engine.count("acb_k") == 1000
    assert engine.query(f"SELECT DISTINCT status FROM {engine.table}") == [("queued",)]


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_a_failed_commit_is_reported_as_such(engine: Engine) -> None:
    """A deferred constraint fails at COMMIT: the error says the outcome is unknown, and indeed nothing mixed."""
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_c", rows_of(writer, make_batch("acb_c", 5, status="queued")))
    function = f"{engine.table}_reject"
    engine.execute(
        f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.status = 'completed' THEN RAISE EXCEPTION 'rejected at commit'; END IF; RETURN NEW; END $$"
    )
    engine.drops(f"DROP FUNCTION IF EXISTS {function}() CASCADE")
    engine.execute(
        f"CREATE CONSTRAINT TRIGGER {function} AFTER INSERT ON {engine.table} DEFERRABLE INITIALLY DEFERRED "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()"
    )
    with writer_for(engine) as writer, pytest.raises(CartesiaWarehouseError, match="outcome is unknown"):
        writer.replace_batch("acb_c", rows_of(writer, make_batch("acb_c", 5)))
    assert engine.query(f"SELECT DISTINCT status FROM {engine.table}") == [("queued",)]
    assert engine.count("acb_c") == 5


def test_readers_never_see_a_half_written_batch(engine: Engine) -> None:
    seen: list[int] = []
    with writer_for(engine, chunk_size=100) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_r", rows_of(writer, make_batch("acb_r", 300, status="queued")))
        writer.replace_batch("acb_other", rows_of(writer, make_batch("acb_other", 10)))

        def watched(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
            for i, row in enumerate(rows):
                if i in (0, 250, 499):  # after the delete, and after chunks were sent
                    seen.append(engine.count("acb_r"))
                yield row

        writer.replace_batch("acb_r", watched(rows_of(writer, make_batch("acb_r", 500))))
    assert seen == [300, 300, 300]
    assert engine.count("acb_r") == 500
    assert engine.count("acb_other") == 10


def test_missing_columns_are_named_or_added(engine: Engine) -> None:
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_m", rows_of(writer, make_batch("acb_m", 3)))
    wide = export_columns(include_calls=True, include_transcript=True)
    with WarehouseWriter(get_warehouse_hook(CONN_ID), engine.table, wide) as writer:
        with pytest.raises(CartesiaWarehouseSchemaError) as caught:
            writer.ensure_table()
        message = str(caught.value)
        for name in ("call_status", "call_start_time", "call_attempts", "call_transcript", "add_missing_columns=True"):
            assert name in message
        assert "batch_id" not in message.split("lacks")[1]
        assert writer.ensure_table(add_missing_columns=True) == [c.name for c in wide[len(RECIPIENT_COLUMNS) :]]
        assert writer.ensure_table() == []
    assert engine.count("acb_m") == 3, "adding columns keeps the rows"
    assert engine.query(f"SELECT call_attempts, call_transcript FROM {engine.table}")[0] == (None, None)


def test_missing_table_without_create_is_a_clear_error(engine: Engine) -> None:
    with writer_for(engine) as writer, pytest.raises(CartesiaWarehouseSchemaError, match="create_table=True"):
        writer.ensure_table(create=False)


def test_an_existing_table_with_extra_columns_is_used_as_is(engine: Engine) -> None:
    ddl = WarehouseTable(get_warehouse_hook(CONN_ID), engine.table, RECIPIENT_COLUMNS).create_sql()
    engine.execute(ddl)
    engine.execute(f"ALTER TABLE {engine.table} ADD COLUMN team VARCHAR(20)")
    with writer_for(engine) as writer:
        assert writer.ensure_table(create=False) == []
        writer.replace_batch("acb_e", rows_of(writer, make_batch("acb_e", 4)))
    assert engine.count("acb_e") == 4


def test_schema_qualified_and_reserved_word_tables(engine: Engine) -> None:
    schema = "main" if engine.name == "sqlite" else f"cartesia_s_{engine.table[-10:]}"
    if engine.name == "postgres":
        engine.execute(f"CREATE SCHEMA {schema}")
        engine.drops(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    elif engine.name == "mysql":
        engine.execute(f"CREATE DATABASE {schema}")
        engine.drops(f"DROP DATABASE IF EXISTS {schema}")
    qualified = f"{schema}.{engine.table}"
    with writer_for(engine, qualified) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_s", rows_of(writer, make_batch("acb_s", 3)))
    assert engine.count("acb_s", table=qualified) == 3
    # A reserved word as a table name works: the hook's dialect quotes it.
    with writer_for(engine, "order") as writer:
        engine.drops({"mysql": "DROP TABLE IF EXISTS `order`"}.get(engine.name, 'DROP TABLE IF EXISTS "order"'))
        assert "order" in writer.table.qualified and writer.table.qualified != "order"
        writer.ensure_table()
        writer.replace_batch("acb_o", rows_of(writer, make_batch("acb_o", 2)))
        assert writer.replace_batch("acb_o", rows_of(writer, make_batch("acb_o", 2))) == 2
    quoted = "`order`" if engine.name == "mysql" else '"order"'
    assert engine.count("acb_o", table=quoted) == 2
    if engine.name == "sqlite":
        engine.execute('DROP TABLE "order"')


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_columns_are_native_types(engine: Engine) -> None:
    with writer_for(engine) as writer:
        writer.ensure_table()
    types = dict(engine.query(f"SELECT column_name, data_type FROM {COLUMNS} WHERE table_name = %s", (engine.table,)))
    assert types["metadata"] == "jsonb"
    assert types["created_at"] == types["exported_at"] == "timestamp with time zone"
    pk = engine.query(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attname",
        (engine.table,),
    )
    assert pk == [("batch_id",), ("recipient_id",)]


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_mysql_columns_and_case_sensitive_ids(engine: Engine) -> None:
    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_Case", rows_of(writer, make_batch("acb_Case", 2)))
        writer.replace_batch("acb_case", rows_of(writer, make_batch("acb_case", 3)))
    assert engine.count("acb_Case") == 2 and engine.count("acb_case") == 3
    types = dict(
        engine.query(
            f"SELECT column_name, data_type FROM {COLUMNS} WHERE table_schema = 'test' AND table_name = %s",
            (engine.table,),
        )
    )
    assert types["created_at"] == "datetime"
    assert types["metadata"] in {"json", "longtext"}  # MariaDB's JSON is LONGTEXT with a json_valid check


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_generic_sql_path_on_a_real_engine(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgresHook flagged for Redshift gets standard SQL types and executemany (no JSONB, no COPY)."""
    conn = {**json.loads(engine.conn_json), "extra": {"redshift": True}}
    monkeypatch.setenv("AIRFLOW_CONN_GENERIC", json.dumps(conn))
    hook = get_warehouse_hook("generic")
    with WarehouseWriter(hook, engine.table, RECIPIENT_COLUMNS, chunk_size=3) as writer:
        assert writer.engine.name == "generic"
        assert writer.insert_method == {"copy": "executemany"}.get(engine.bulk_method, engine.bulk_method)
        writer.ensure_table()
        writer.replace_batch("acb_g", rows_of(writer, make_batch("acb_g", 10, metadata=HOSTILE_METADATA)))
        writer.replace_batch("acb_g", rows_of(writer, make_batch("acb_g", 10, metadata=HOSTILE_METADATA)))
    types = dict(engine.query(f"SELECT column_name, data_type FROM {COLUMNS} WHERE table_name = %s", (engine.table,)))
    assert types["metadata"] == "character varying"
    assert types["created_at"] == "timestamp with time zone"
    assert engine.count("acb_g") == 10
    assert json_value(engine.rows(columns="metadata")[0][0]) == HOSTILE_METADATA
    assert utc_value(engine.rows(columns="created_at")[0][0]) == T0


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_psycopg2_connections_use_execute_values(engine: Engine) -> None:
    import psycopg2
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    class Psycopg2Hook(PostgresHook):
        def get_conn(self) -> Any:
            return psycopg2.connect(engine.uri)

    hook = Psycopg2Hook(postgres_conn_id=CONN_ID)
    with WarehouseWriter(hook, engine.table, RECIPIENT_COLUMNS, chunk_size=7) as writer:
        assert writer.insert_method == "execute_values"
        writer.ensure_table()
        writer.replace_batch("acb_p2", rows_of(writer, make_batch("acb_p2", 20, metadata=HOSTILE_METADATA)))
        nul = make_batch("acb_p2_nul", 2, metadata={"n": "a\x00b"}, name="x\x00y")
        writer.replace_batch("acb_p2_nul", lambda: rows_of(writer, nul))
    assert engine.count("acb_p2") == 20
    assert json_value(engine.rows(columns="metadata")[0][0]) == HOSTILE_METADATA
    stored = engine.query(f"SELECT batch_name, metadata FROM {engine.table} WHERE batch_id = %s", ("acb_p2_nul",))
    assert [(name, json_value(meta)) for name, meta in stored] == [("x\ufffdy", {"n": "a\ufffdb"})] * 2


def test_sqlite_works_without_the_sqlite_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_LOCALDB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "x.db")}))
    hook = get_warehouse_hook("localdb")
    assert hook.dialect_name == "sqlite"
    assert hook.placeholder == "?"
    with WarehouseWriter(hook, "t", RECIPIENT_COLUMNS) as writer:
        assert writer.engine.name == "sqlite"
        writer.ensure_table()
        assert writer.replace_batch("acb_1", rows_of(writer, make_batch("acb_1", 2))) == 2
    assert (tmp_path / "x.db").exists()


def test_a_relative_sqlite_path_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cartesia.warehouse import _sqlite_provider_installed

    if _sqlite_provider_installed():
        pytest.skip("the sqlite provider's own hook resolves paths its way")
    monkeypatch.setenv("AIRFLOW_CONN_RELDB", '{"conn_type": "sqlite", "host": "warehouse.db"}')
    with pytest.raises(CartesiaWarehouseSchemaError, match="absolute path"):
        WarehouseWriter(get_warehouse_hook("reldb"), "t", RECIPIENT_COLUMNS).connection  # noqa: B018


def test_a_connection_without_a_sql_hook_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NOTSQL", '{"conn_type": "cartesia", "password": "sk_car_x"}')
    with pytest.raises(CartesiaWarehouseSchemaError, match="no SQL"):
        get_warehouse_hook("notsql")


# -- names the engines reserve, characters they cannot store -------------------------------------


@pytest.mark.parametrize("word", ["values", "index", "lateral", "concurrently", "returning", "order", "user"])
def test_every_identifier_is_quoted_so_reserved_words_work(engine: Engine, word: str) -> None:
    """Words one engine's dialect does not know to be reserved (values, index on SQLite; lateral,
    concurrently on PostgreSQL; returning) as table and schema names: created, written, rewritten."""
    quote = "`{}`" if engine.name == "mysql" else '"{}"'
    engine.drops(f"DROP TABLE IF EXISTS {quote.format(word)}")
    with writer_for(engine, word) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_w", rows_of(writer, make_batch("acb_w", 3)))
        assert writer.replace_batch("acb_w", rows_of(writer, make_batch("acb_w", 3))) == 3
        assert writer.ensure_table(create=False) == []
    assert engine.count("acb_w", table=quote.format(word)) == 3
    if engine.name == "sqlite":
        engine.execute(f"DROP TABLE {quote.format(word)}")
        return
    # A reserved word as the schema too.
    schema = f"{word}_{engine.table[-6:]}" if engine.name == "mysql" else word
    if engine.name == "postgres":
        engine.execute(f"CREATE SCHEMA IF NOT EXISTS {quote.format(schema)}")
        engine.drops(f"DROP SCHEMA IF EXISTS {quote.format(schema)} CASCADE")
        table = f"{schema}.{engine.table}"
    else:
        engine.execute(f"CREATE DATABASE {quote.format(schema)}")
        engine.drops(f"DROP DATABASE IF EXISTS {quote.format(schema)}")
        table = f"{schema}.{word}"
    with writer_for(engine, table) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_s", rows_of(writer, make_batch("acb_s", 2)))
    qualified = ".".join(quote.format(p) for p in table.split("."))
    assert engine.count("acb_s", table=qualified) == 2


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_postgres_names_fold_as_unquoted_names_do(engine: Engine) -> None:
    """Quoting keeps PostgreSQL's folding: a table made unquoted as Mixed_Case is found as mixed_case."""
    mixed = f"Mixed_{engine.table}"
    ddl = WarehouseTable(get_warehouse_hook(CONN_ID), engine.table, RECIPIENT_COLUMNS).create_sql()
    engine.execute(ddl.replace(f'"{engine.table}"', mixed))  # unquoted: PostgreSQL stores it lower case
    engine.drops(f"DROP TABLE IF EXISTS {mixed.lower()}")
    with writer_for(engine, mixed) as writer:
        assert writer.table.qualified == f'"{mixed.lower()}"'
        assert writer.ensure_table(create=False) == []
        writer.replace_batch("acb_f", rows_of(writer, make_batch("acb_f", 2)))
    assert engine.count("acb_f", table=mixed) == 2


def test_nul_characters_are_stored(engine: Engine) -> None:
    """The API can return U+0000 in metadata and text; PostgreSQL stores neither in TEXT nor in JSONB (22P05)."""
    metadata = {"note": "a\x00b", "k\x00ey": ["\x00", {"deep": "x\x00"}], "literal": "\\u0000 is text"}
    batch = make_batch("acb_nul", 3, metadata=metadata, name="Renewals\x00 2026")
    with writer_for(engine) as writer:
        writer.ensure_table()
        assert writer.replace_batch("acb_nul", rows_of(writer, batch)) == 3
    (name, stored) = engine.query(f"SELECT batch_name, metadata FROM {engine.table} WHERE batch_id = ?", ("acb_nul",))[
        0
    ]
    if engine.name == "postgres":
        assert name == "Renewals\ufffd 2026"
        assert json_value(stored) == {
            "note": "a\ufffdb",
            "k\ufffdey": ["\ufffd", {"deep": "x\ufffd"}],
            "literal": "\\u0000 is text",
        }
    else:
        assert name == "Renewals\x00 2026"
        assert json_value(stored) == metadata


def test_only_rows_with_nul_change() -> None:
    from airflow_provider_cartesia.rows import Column
    from airflow_provider_cartesia.warehouse import without_nul

    columns = [Column("a", "text", ""), Column("n", "integer", ""), Column("j", "json", ""), Column("b", "text", "")]
    escaped = ("a", 1, '{"x":"\\\\u0000"}', None)  # an escaped backslash before u0000 is no NUL
    assert list(without_nul([escaped], columns)) == [escaped]
    clean = ("日本語 📞 Zoë", 2, '{"x":"y"}', "b")
    assert next(without_nul([clean], columns)) is clean, "no copy of a clean row"
    assert list(without_nul([("a\x00", 3, '{"x\\u0000":"\\u0000"}', "\x00")], columns)) == [
        ("a\ufffd", 3, '{"x\ufffd":"\ufffd"}', "\ufffd")
    ]


# -- MySQL/MariaDB storage engines --------------------------------------------------------------


def _storage_engine(engine: Engine, table: str) -> str:
    query = "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?"
    return str(engine.query(query, (table,))[0][0])


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_tables_are_created_innodb_whatever_the_default_engine(engine: Engine) -> None:
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    hook = MySqlHook(mysql_conn_id=CONN_ID, init_command="SET SESSION default_storage_engine = MyISAM")
    with WarehouseWriter(hook, engine.table, RECIPIENT_COLUMNS) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_i", rows_of(writer, make_batch("acb_i", 2)))
    assert _storage_engine(engine, engine.table) == "InnoDB"


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
@pytest.mark.parametrize("storage", ["MyISAM", "Aria"])
def test_a_table_without_transactions_is_refused(engine: Engine, storage: str) -> None:
    """On MyISAM or Aria a failed export would leave half a batch while claiming the old rows intact: refused."""
    ddl = WarehouseTable(get_warehouse_hook(CONN_ID), engine.table, RECIPIENT_COLUMNS).create_sql()
    short_keys = ddl.replace("VARCHAR(255) COLLATE", "VARCHAR(100) COLLATE")  # MyISAM keys: 1,000 bytes at most
    engine.execute(short_keys.replace("ENGINE=InnoDB", f"ENGINE={storage}"))
    assert _storage_engine(engine, engine.table) == storage
    with writer_for(engine) as writer:
        writer.replace_batch("acb_old", rows_of(writer, make_batch("acb_old", 4)))  # rows of an earlier version
        with pytest.raises(CartesiaWarehouseSchemaError, match=f"uses the {storage} storage engine") as caught:
            writer.ensure_table()
    assert "ENGINE=InnoDB" in str(caught.value)
    assert engine.count("acb_old") == 4
    engine.execute(f"ALTER TABLE {engine.table} ENGINE=InnoDB")  # what the message says to do
    with writer_for(engine) as writer:
        assert writer.ensure_table() == []


# -- concurrent writers ---------------------------------------------------------------------------


def _session_id(engine: Engine, conn: Any) -> int | None:
    if engine.name == "postgres":
        return int(conn.info.backend_pid)
    if engine.name == "mysql":
        return int(conn.thread_id())
    return None  # SQLite: the wait happens inside the library, with nothing to observe


def _wait_until_blocked(engine: Engine, session: int | None) -> None:
    """Return once the server shows ``session`` waiting for a lock (polls, bounded; no sleep)."""
    if session is None:
        return
    if engine.name == "postgres":
        sql = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s"
    else:
        sql = (
            "SELECT LOCATE('lock', LOWER(COALESCE(p.STATE, ''))) > 0 OR t.trx_state = 'LOCK WAIT' "
            "FROM information_schema.PROCESSLIST p LEFT JOIN information_schema.INNODB_TRX t "
            "ON t.trx_mysql_thread_id = p.ID WHERE p.ID = %s"
        )
    conn = engine.connect()
    try:
        for _ in range(5000):
            cur = conn.cursor()
            cur.execute(sql, (session,))
            row = cur.fetchone()
            conn.commit()
            if row and row[0]:
                return
        raise AssertionError(f"session {session} never waited for the other writer")
    finally:
        conn.close()


@pytest.mark.parametrize("earlier", [True, False], ids=["re_export", "first_export"])
def test_two_exports_of_one_batch_at_once_both_succeed(engine: Engine, earlier: bool) -> None:
    """Writer B starts while A is inside its transaction: B waits for A (or retries), never fails, never doubles.

    Unserialized, PostgreSQL fails B with a primary-key violation and MariaDB deadlocks a first export.
    """
    import threading

    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_other", rows_of(writer, make_batch("acb_other", 5)))
        if earlier:
            writer.replace_batch("acb_c", rows_of(writer, make_batch("acb_c", 400, status="queued")))
    a_inside, b_session, errors = threading.Event(), [], []
    b_connected = threading.Event()

    def a_rows(writer: WarehouseWriter) -> Iterator[tuple[Any, ...]]:
        for i, row in enumerate(rows_of(writer, make_batch("acb_c", 400, status="completed"))):
            if i == 200 and not a_inside.is_set():  # only the first try waits for B
                a_inside.set()
                assert b_connected.wait(60), "B never started"
                _wait_until_blocked(engine, b_session[0])
            yield row

    def run(name: str) -> None:
        try:
            with writer_for(engine) as writer:
                if name == "a":
                    writer.replace_batch("acb_c", lambda: a_rows(writer))
                else:
                    b_session.append(_session_id(engine, writer.connection))
                    b_connected.set()
                    failed = make_batch("acb_c", 300, status="failed", end_reason="dial_busy")
                    writer.replace_batch("acb_c", lambda: rows_of(writer, failed))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append((name, exc))
            a_inside.set()
            b_connected.set()

    a = threading.Thread(target=run, args=("a",))
    a.start()
    assert a_inside.wait(60)
    b = threading.Thread(target=run, args=("b",))
    b.start()
    a.join(120)
    b.join(120)
    assert not a.is_alive() and not b.is_alive()
    assert errors == []
    # B started last and waited for A: its rows are the batch now, one per recipient.
    assert engine.count("acb_c") == 300
    assert engine.query(f"SELECT DISTINCT status FROM {engine.table} WHERE batch_id = ?", ("acb_c",)) == [("failed",)]
    assert engine.count("acb_other") == 5


@pytest.mark.parametrize("engine", ["mysql", "postgres"], indirect=True)
def test_concurrent_exports_of_neighbouring_batches_both_succeed(engine: Engine) -> None:
    """Different batches of one table at once (InnoDB's gap locks can deadlock them): a deadlock is tried again."""
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"acb_n{i}" for i in range(4)]
    with writer_for(engine) as writer:
        writer.ensure_table()
        for batch_id in ids:
            writer.replace_batch(batch_id, rows_of(writer, make_batch(batch_id, 200, status="queued")))

    def export(batch_id: str) -> int:
        with writer_for(engine) as writer:
            return writer.replace_batch(batch_id, lambda: rows_of(writer, make_batch(batch_id, 250)))

    for _ in range(3):
        with ThreadPoolExecutor(len(ids)) as pool:
            assert list(pool.map(export, ids)) == [250] * len(ids)
    assert [engine.count(b) for b in ids] == [250] * len(ids)


@pytest.mark.parametrize("engine", ["mysql"], indirect=True)
def test_a_writer_that_waits_too_long_for_another_gives_up_and_writes_nothing(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_cartesia import warehouse

    with writer_for(engine) as writer:
        writer.ensure_table()
        writer.replace_batch("acb_l", rows_of(writer, make_batch("acb_l", 3, status="queued")))
        key = writer.table.batch_lock_key("acb_l")
        holder = engine.connect()  # another export of the same batch, holding the lock
        try:
            cur = holder.cursor()
            cur.execute("SELECT GET_LOCK(%s, 0)", (key,))
            assert cur.fetchall()[0][0] == 1
            monkeypatch.setattr(warehouse, "LOCK_WAIT_SECONDS", 0)
            with pytest.raises(CartesiaWarehouseError, match="waited 0 s for another export") as caught:
                writer.replace_batch("acb_l", rows_of(writer, make_batch("acb_l", 5)))
            assert not isinstance(caught.value, CartesiaWarehouseSchemaError), "a try later may succeed"
        finally:
            holder.close()
        monkeypatch.setattr(warehouse, "LOCK_WAIT_SECONDS", 30)
        assert writer.replace_batch("acb_l", rows_of(writer, make_batch("acb_l", 5))) == 5
    assert engine.count("acb_l") == 5


def test_writers_that_create_the_table_at_the_same_moment_all_succeed(engine: Engine) -> None:
    """PostgreSQL's CREATE TABLE IF NOT EXISTS can fail (23505 on pg_type) when another session creates the same
    table at that moment: the table exists then, and the export goes on."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    for round_ in range(3):
        table = f"{engine.table}_{round_}"
        engine.drops(f"DROP TABLE IF EXISTS {table}")
        start = threading.Barrier(4)

        def export(batch_id: str, table: str = table, start: threading.Barrier = start) -> int:
            with writer_for(engine, table) as writer:
                start.wait(60)
                writer.ensure_table()
                return writer.replace_batch(batch_id, lambda: rows_of(writer, make_batch(batch_id, 20)))

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(export, [f"acb_{i}" for i in range(4)])) == [20] * 4
        assert engine.count(table=table) == 80
