"""Every day, export the outcomes of every Cartesia call batch that changed during the previous day.

A batch is picked by the run whose data interval holds its latest change (``last_updated_at``) and its
rows are replaced as a whole, so running a day again, or catching up on missed days in any order,
leaves the table as one pass would have::

    airflow backfill create --dag-id cartesia_daily_outcomes --from-date 2026-06-01 --to-date 2026-06-07

Connections: ``cartesia_default`` (type ``cartesia``) and ``cartesia_warehouse`` (any SQL database).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import dag

from airflow_provider_cartesia.compat import CronTriggerTimetable
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator

CARTESIA_CONN_ID = "cartesia_default"
WAREHOUSE_CONN_ID = "cartesia_warehouse"


@dag(
    doc_md=__doc__,
    # At midnight UTC, covering the day just ended. (A bare "@daily" gives Airflow 3 runs an empty
    # data interval: an instant, not a day to export.)
    schedule=CronTriggerTimetable("@daily", timezone="UTC", interval=timedelta(days=1)),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,  # past days: use `airflow backfill create` (above)
    max_active_runs=1,
    tags=["cartesia", "example"],
    # A lost worker or a passing failure: the export is tried again (it replaces the rows it wrote).
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
)
def cartesia_daily_outcomes() -> None:
    # No batch id: the operator exports every batch updated in [data_interval_start, data_interval_end).
    CallBatchToWarehouseOperator(
        task_id="export_batches_updated_that_day",
        include_calls=True,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        cartesia_conn_id=CARTESIA_CONN_ID,
    )


cartesia_daily_outcomes()
