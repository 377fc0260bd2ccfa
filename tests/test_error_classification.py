"""One answer to "is this error permanent?", seen through real callers: the hook, the wait, the export.

The table of every error class is in test_exceptions.py; here a 402 (which the three lists of old
disagreed on), a 503 and an answer about another batch go through the real simulator, and each caller
must agree with :func:`~airflow_provider_cartesia.exceptions.is_permanent`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cartesia.compat import AirflowFailException
from airflow_provider_cartesia.exceptions import (
    CartesiaPaymentRequiredError,
    CartesiaServerError,
    is_permanent,
)
from airflow_provider_cartesia.sensors.call_batch import CallBatchSensor
from airflow_provider_cartesia.testing import CartesiaSimulator, Fault
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator
from tests.helpers import SleepRecorder

BATCH_ROUTE = "/agents/calls/batches/*"


class _TI:
    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def _export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_id: str) -> CallBatchToWarehouseOperator:
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_CLS", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "w.db")})
    )
    op = CallBatchToWarehouseOperator(task_id="export", warehouse_conn_id="warehouse_cls", batch_id=batch_id)
    op.hook._sleep = SleepRecorder()
    return op


def test_a_402_is_permanent_for_the_hook_the_wait_and_the_export(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=2)
    sim.inject("GET", BATCH_ROUTE, Fault(status=402), times=3)

    export = _export(tmp_path, monkeypatch, batch_id)
    with pytest.raises(AirflowFailException, match="HTTP 402") as info:
        export.execute({"ti": _TI()})
    assert isinstance(info.value.__cause__, CartesiaPaymentRequiredError) and is_permanent(info.value.__cause__)
    assert sim.count("GET", BATCH_ROUTE) == 1, "the hook did not retry it"

    sensor = CallBatchSensor(task_id="wait", batch_id=batch_id, poke_interval=1, max_consecutive_failures=5)
    with pytest.raises(AirflowFailException, match="HTTP 402"):
        sensor.poke({"ti": _TI()})  # type: ignore[arg-type]
    assert sim.count("GET", BATCH_ROUTE) == 2, "the wait spent no budget on it: one look, then failed"


def test_a_503_that_outlasts_the_retries_is_transient_for_the_export(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sim = cartesia_simulator
    batch_id = sim.seed_batch(recipients=2)
    sim.inject("GET", BATCH_ROUTE, Fault.server_error(503), times=50)
    export = _export(tmp_path, monkeypatch, batch_id)
    with pytest.raises(CartesiaServerError) as info:
        export.execute({"ti": _TI()})
    assert not isinstance(info.value, AirflowFailException), "the task's retries apply"
    assert sim.count("GET", BATCH_ROUTE) == 5, "the hook retried it (max_retries=4)"


def test_an_answer_for_another_batch_is_never_exported(
    cartesia_simulator: CartesiaSimulator, cartesia_conn_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import sqlite3

    sim = cartesia_simulator
    asked, other = sim.seed_batch(recipients=2), sim.seed_batch(recipients=3)
    sim.inject("GET", BATCH_ROUTE, Fault(status=200, body=sim.batch(other)))
    export = _export(tmp_path, monkeypatch, asked)
    with pytest.raises(AirflowFailException, match=f"asked for call batch {asked}"):
        export.execute({"ti": _TI()})
    with sqlite3.connect(tmp_path / "w.db") as db:
        tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        rows = sum(db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for (name,) in tables)
    assert rows == 0, "nothing of the other batch was written"
