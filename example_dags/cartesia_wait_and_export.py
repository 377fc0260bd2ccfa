"""Wait for a Cartesia call batch to finish, then export every recipient's outcome to a SQL table.

Trigger it with the id of a batch you started elsewhere (the Cartesia dashboard, the API, another DAG)::

    airflow dags trigger cartesia_wait_and_export --conf '{"batch_id": "acb_..."}'

Connections: ``cartesia_default`` (type ``cartesia``: your API key) and ``cartesia_warehouse`` (any SQL
database Airflow can reach: postgres, mysql, sqlite, snowflake, ...). See docs/connection.md.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag

from airflow_provider_cartesia.sensors.call_batch import CallBatchSensor
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator

CARTESIA_CONN_ID = "cartesia_default"
WAREHOUSE_CONN_ID = "cartesia_warehouse"
# How often to look at the batch. Campaigns run for minutes to hours: once a minute is plenty.
# (The demo and the end-to-end test set CARTESIA_POKE_INTERVAL=1 to run in seconds.)
POKE_INTERVAL = float(os.environ.get("CARTESIA_POKE_INTERVAL", "60"))
# A task whose worker is lost (or that fails on a passing error) is tried again after a minute.
# Both tasks are safe to retry: the wait starts over, the export replaces the batch's rows.
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=float(os.environ.get("CARTESIA_RETRY_DELAY", "60")))}


@dag(
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    tags=["cartesia", "example"],
    default_args=RETRIES,
    params={
        "batch_id": Param(type="string", pattern="^acb_", description="The call batch to wait for (acb_...)."),
    },
)
def cartesia_wait_and_export() -> None:
    # Deferrable: the wait runs in the triggerer, so no worker slot is held while the calls go on.
    # It ends when the batch is `completed` *and* every dispatched call has hung up.
    wait = CallBatchSensor(
        task_id="wait_for_batch",
        batch_id="{{ params.batch_id }}",
        cartesia_conn_id=CARTESIA_CONN_ID,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(hours=12).total_seconds(),
    )

    # One row per recipient, with its latest call; rerunning replaces the batch's rows.
    export = CallBatchToWarehouseOperator(
        task_id="export_outcomes",
        batch_id="{{ params.batch_id }}",
        include_calls=True,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        cartesia_conn_id=CARTESIA_CONN_ID,
    )

    wait >> export


cartesia_wait_and_export()
