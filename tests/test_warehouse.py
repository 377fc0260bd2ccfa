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
    return batch_rows(batch, exported_at=EXPORTED, adapt_time=writer.adapt_time)


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
    assert engine.count("acb_p2") == 20
    assert json_value(engine.rows(columns="metadata")[0][0]) == HOSTILE_METADATA


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
