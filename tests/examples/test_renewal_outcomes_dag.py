"""The example of docs/testing.md "Test your own DAG", run as a real test (tests/test_docs_testing.py
checks that the page shows this file as it is)."""

import json
import sqlite3

import pytest
from airflow.sdk import DAG

from airflow_provider_cartesia.sensors.call_batch import CallBatchSensor
from airflow_provider_cartesia.testing.dag_test import run_dag_test
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator

# Your DAG, as it lives in your dags folder (import it from there in your own test).
with DAG("renewal_outcomes", schedule=None, params={"batch_id": ""}) as dag:
    wait = CallBatchSensor(task_id="wait", batch_id="{{ params.batch_id }}", deferrable=True)
    export = CallBatchToWarehouseOperator(
        task_id="export", batch_id="{{ params.batch_id }}", warehouse_conn_id="warehouse"
    )
    wait >> export


@pytest.fixture
def warehouse(tmp_path, monkeypatch):
    """A SQLite file behind the `warehouse` connection."""
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    return path


def test_renewal_outcomes_exports_every_recipient(airflow_db, cartesia_connection, cartesia_simulator, warehouse):
    batch_id = cartesia_simulator.seed_batch(recipients=5, outcomes={"completed": 1})
    cartesia_simulator.clock.advance(3600)  # an hour later every call has ended
    run = run_dag_test(dag, run_conf={"batch_id": batch_id})

    assert run.state == "success"
    rows = sqlite3.connect(warehouse).execute("SELECT status FROM cartesia_call_batch_recipients").fetchall()
    assert rows == [("completed",)] * 5


def test_renewal_outcomes_fails_when_no_call_could_be_placed(
    airflow_db, cartesia_connection, cartesia_simulator, warehouse
):
    batch_id = cartesia_simulator.seed_batch(recipients=3, outcomes={"pre_dial_failure": 1})
    cartesia_simulator.clock.advance(3600)
    run = run_dag_test(dag, run_conf={"batch_id": batch_id})

    assert run.state == "failed"
    assert run.get_task_instance("wait").state == "failed"
    assert run.get_task_instance("export").state == "upstream_failed"
    assert [r.path for r in cartesia_simulator.requests] == [f"/agents/calls/batches/{batch_id}"]
