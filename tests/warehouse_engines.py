"""Real warehouses for the export tests: SQLite (a temp file), PostgreSQL and MariaDB (local servers).

Imported by tests/test_warehouse.py and tests/test_transfer_call_batch_to_warehouse.py. Each engine
gets a uniquely named table that is dropped afterwards, an Airflow connection (``warehouse``, set
through ``AIRFLOW_CONN_WAREHOUSE``) and an independent reader connection to check what a second
client sees.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import mysql_connect, postgres_driver, server_connection_json

ENGINES = ("sqlite", "postgres", "mysql")
CONN_ID = "warehouse"


@dataclass
class Engine:
    """One warehouse under test."""

    name: str
    conn_json: str
    connect: Callable[[], Any]
    placeholder: str
    table: str
    bulk_method: str = "executemany"
    """The writer's fast path on this engine (PostgreSQL: ``copy`` on psycopg 3, ``execute_values`` on psycopg2)."""
    uri: str = ""
    """The server's URI (``CARTESIA_TEST_POSTGRES`` / ``CARTESIA_TEST_MYSQL``), for both sides of a test."""
    cleanup: list[str] = field(default_factory=list)
    """SQL run at teardown (drops of what the test created), last first."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            conn.commit()
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` read by a fresh connection (what another client sees now)."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql.replace("?", self.placeholder), params)
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def rows(self, table: str | None = None, columns: str = "*", order: str = "batch_id, recipient_id") -> list:
        return self.query(f"SELECT {columns} FROM {table or self.table} ORDER BY {order}")

    def count(self, batch_id: str | None = None, table: str | None = None) -> int:
        if batch_id is None:
            return int(self.query(f"SELECT COUNT(*) FROM {table or self.table}")[0][0])
        return int(self.query(f"SELECT COUNT(*) FROM {table or self.table} WHERE batch_id = ?", (batch_id,))[0][0])

    def kill(self, conn: Any) -> None:
        """End ``conn``'s server session from another connection (the 'connection lost' failure)."""
        if self.name == "postgres":
            self.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        elif self.name == "mysql":
            self.execute(f"KILL {int(conn.thread_id())}")
        else:
            raise NotImplementedError("an embedded SQLite database has no server session to kill")

    def drops(self, sql: str) -> None:
        """Run ``sql`` at teardown (servers only: the SQLite file goes with tmp_path)."""
        self.cleanup.append(sql)


def json_value(value: Any) -> Any:
    """A JSON column's value as Python (psycopg parses JSONB; the others return text)."""
    if value is None or isinstance(value, (dict, list)):
        return value
    return json.loads(value)


def utc_value(value: Any) -> datetime | None:
    """A timestamp column's value as an aware UTC datetime (SQLite: ISO text; MySQL: naive UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def make_engine(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Set up engine ``name`` (skips, or fails under CARTESIA_REQUIRE_SERVERS, when its server is down)."""
    table = f"cartesia_test_{uuid.uuid4().hex[:10]}"
    if name == "sqlite":
        path = tmp_path / "warehouse.db"
        engine = Engine(
            name,
            json.dumps({"conn_type": "sqlite", "host": str(path)}),
            lambda: sqlite3.connect(path),
            "?",
            table,
        )
    elif name == "postgres":
        uri = request.getfixturevalue("postgres_uri")
        import psycopg

        bulk_method = {"psycopg": "copy", "psycopg2": "execute_values"}[postgres_driver()]
        engine = Engine(
            name, server_connection_json("postgres", uri), lambda: psycopg.connect(uri), "%s", table, bulk_method, uri
        )
    else:
        uri = request.getfixturevalue("mysql_uri")
        engine = Engine(name, server_connection_json("mysql", uri), lambda: mysql_connect(uri), "%s", table, uri=uri)
    engine.drops(f"DROP TABLE IF EXISTS {table}")
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", engine.conn_json)
    yield engine
    if name != "sqlite":
        for sql in reversed(engine.cleanup):
            engine.execute(sql)
