"""Run an outbound calling campaign: call the contacts a warehouse query selects, wait until every call
has ended, export the outcomes into the same warehouse, and report the counts.

    airflow dags trigger cartesia_campaign --conf '{"agent_id": "agent_...", "from_number_id": "pn_..."}'

A retried or cleared ``create_batch`` re-attaches to the batch it already created: nobody is dialed twice.

Connections: ``cartesia_default`` (type ``cartesia``) and ``cartesia_warehouse`` (any SQL database), which
holds the ``campaign_contacts`` table read below and receives ``cartesia_call_batch_recipients``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, XComArg, dag, task

from airflow_provider_cartesia.operators.call_batch import CreateCallBatchOperator
from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator

CARTESIA_CONN_ID = "cartesia_default"
WAREHOUSE_CONN_ID = "cartesia_warehouse"
# How often to look at the batch while its calls run (the demo sets CARTESIA_POKE_INTERVAL=1).
POKE_INTERVAL = float(os.environ.get("CARTESIA_POKE_INTERVAL", "60"))
# A task whose worker is lost (or that fails on a passing error) is tried again after a minute:
# a retried create_batch re-attaches to its batch, the export replaces the batch's rows.
RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=float(os.environ.get("CARTESIA_RETRY_DELAY", "60")))}

# One recipient per row: a `to_number` column (E.164); every other column goes into the call's metadata,
# which the agent can use and which comes back in the export.
CONTACTS_SQL = """
SELECT phone AS to_number, customer_id, plan
FROM campaign_contacts
WHERE do_not_call = 0
ORDER BY customer_id
"""


@dag(
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    tags=["cartesia", "example"],
    default_args=RETRIES,
    params={
        "agent_id": Param(type="string", description="The Cartesia agent that makes the calls."),
        "from_number_id": Param(type="string", description="The phone number id the calls come from."),
        "campaign_name": Param("Renewal reminders", type="string", description="The batch's label."),
    },
)
def cartesia_campaign() -> None:
    # Creates the batch, then waits (deferred: no worker slot held) until every call has ended.
    # More than 5,000 contacts become several batches, and the wait covers them all.
    create_and_wait = CreateCallBatchOperator(
        task_id="create_batch",
        name="{{ params.campaign_name }}",
        agent_id="{{ params.agent_id }}",
        from_number_id="{{ params.from_number_id }}",
        recipients_sql=CONTACTS_SQL,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        target_concurrency_limit=10,
        wait_for_completion=True,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=timedelta(hours=12),
        cartesia_conn_id=CARTESIA_CONN_ID,
    )

    export = CallBatchToWarehouseOperator(
        task_id="export_outcomes",
        batch_ids=XComArg(create_and_wait, key="cartesia_batch_ids"),  # every batch the task created
        include_calls=True,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        cartesia_conn_id=CARTESIA_CONN_ID,
    )

    @task
    def report(summary: dict) -> dict:
        """Print the campaign's outcome counts (the export's summary holds counts, never a phone number)."""
        print(f"{summary['rows_written']:,} recipients exported to {summary['table']}")
        for title, counts in (("status", summary["status_counts"]), ("end reason", summary["end_reason_counts"])):
            for value, count in sorted(counts.items(), key=lambda item: -item[1]):
                print(f"  {title:<10} {value or '-':<16} {count:>6,}")
        return summary["status_counts"]

    report(export.output)


cartesia_campaign()
