"""Helpers shared by test modules (import these, never ``tests.conftest``: it configures Airflow)."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow_provider_cartesia.compat import AIRFLOW_V_3_2_PLUS
from airflow_provider_cartesia.testing import CartesiaSimulator


def server_connection_json(conn_type: str, uri: str) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON form) for the database server of ``uri`` (``scheme://user:pw@host:port/db``).

    The writing side (the Airflow connection) and the reading side of a test then use the same server.
    """
    parts = urlsplit(uri)
    conn = {"conn_type": conn_type, "host": parts.hostname, "port": parts.port, "login": parts.username}
    conn |= {"password": unquote(parts.password or ""), "schema": parts.path.lstrip("/")}
    return json.dumps(conn)


def mysql_connect(uri: str, **kwargs: Any) -> Any:
    """A mysqlclient connection to the server of ``uri`` (``mysql://user:pw@host:port/db``)."""
    import MySQLdb

    parts = urlsplit(uri)
    return MySQLdb.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        passwd=unquote(parts.password or ""),
        db=parts.path.lstrip("/"),
        charset="utf8mb4",
        **kwargs,
    )


def postgres_driver() -> str:
    """The driver the installed postgres provider's PostgresHook connects with: ``psycopg`` (3) or ``psycopg2``.

    Providers before 6.3 (what Airflow 3.0 resolves to) use psycopg2 only; later ones psycopg 3 when it is
    installed with SQLAlchemy 2.
    """
    from airflow.providers.postgres.hooks import postgres

    return "psycopg" if getattr(postgres, "USE_PSYCOPG3", False) else "psycopg2"


def cartesia_connection_json(sim: CartesiaSimulator, **extra: object) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON form) pointing at the simulator."""
    return json.dumps(
        {
            "conn_type": "cartesia",
            "host": sim.url,
            "password": sim.api_key,
            "extra": {"api_version": "2026-03-01", **extra},
        }
    )


class SleepRecorder:
    """Stands in for ``time.sleep`` / ``asyncio.sleep``: records the waits, waits for nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def dag_bag(folder: str) -> Any:
    """Airflow's DagBag of ``folder`` (``airflow.dag_processing.dagbag`` from 3.2, ``airflow.models`` before)."""
    module = "airflow.dag_processing.dagbag" if AIRFLOW_V_3_2_PLUS else "airflow.models.dagbag"
    return importlib.import_module(module).DagBag(folder)


def import_string(dotted_path: str) -> Any:
    """The object at ``module.attribute`` (as the triggerer imports a trigger's classpath)."""
    module, _, name = dotted_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """structlog's ``capture_logs``, plus the provider's stdlib log records in the same shape.

    Triggers log through structlog from Airflow 3.1 and through stdlib logging on 3.0 (where Airflow's
    own records, such as "Connection Retrieved", are left out: only ``airflow_provider_cartesia.*``).
    """
    from structlog.testing import capture_logs as capture_structlog

    entries: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            entries.append({"log_level": record.levelname.lower(), "event": record.getMessage()})

    handler = Collect(logging.DEBUG)
    ours = logging.getLogger("airflow_provider_cartesia")
    ours.addHandler(handler)
    try:
        with capture_structlog() as structured:
            yield entries
    finally:
        ours.removeHandler(handler)
        entries.extend(structured)
