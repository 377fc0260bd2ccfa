"""Export every Cartesia call batch as soon as it settles: event-driven, no batch id to pass by hand.

The asset ``cartesia_settled_call_batches`` is watched by a ``CallBatchEventTrigger`` in the
triggerer: it reads the batch list (counters, no recipients) every ``poll_interval`` and emits one
asset event per batch that settles (every call ended; ``completed``, ``failed`` or ``cancelled``).
Each event schedules a run of this DAG, which exports the batches named by its triggering events.
A duplicate event is possible (after a triggerer restart): the export replaces a batch's rows, so
running it twice is harmless. See docs/events.md.

Connections: ``cartesia_default`` (type ``cartesia``) and ``cartesia_warehouse`` (any SQL database).
Settings (environment): ``CARTESIA_AGENT_ID`` (watch one agent; empty: every batch of the key),
``CARTESIA_EVENTS_SINCE`` (RFC 3339: export batches settled after it; empty: from the first start).
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import Asset, AssetWatcher, dag, task

from airflow_provider_cartesia.transfers.call_batch_to_warehouse import CallBatchToWarehouseOperator
from airflow_provider_cartesia.triggers.call_batch_event import CallBatchEventTrigger

CARTESIA_CONN_ID = "cartesia_default"
WAREHOUSE_CONN_ID = "cartesia_warehouse"
# Once a minute is plenty for campaigns of minutes to hours (the end-to-end test sets 1 s).
POLL_INTERVAL = float(os.environ.get("CARTESIA_POKE_INTERVAL", "60"))

settled_call_batches = Asset(
    "cartesia_settled_call_batches",
    watchers=[
        AssetWatcher(
            name="cartesia_call_batch_settled",
            trigger=CallBatchEventTrigger(
                agent_id=os.environ.get("CARTESIA_AGENT_ID") or None,
                cartesia_conn_id=CARTESIA_CONN_ID,
                poll_interval=POLL_INTERVAL,
                since=os.environ.get("CARTESIA_EVENTS_SINCE") or None,
            ),
        )
    ],
)


@dag(doc_md=__doc__, schedule=[settled_call_batches], catchup=False, tags=["cartesia", "example"])
def cartesia_export_on_settle() -> None:
    @task
    def settled_batch_ids(triggering_asset_events: Any = None) -> list[str]:
        """The batch ids carried by the events that started this run (one run may gather several)."""
        ids = []
        for event in triggering_asset_events[settled_call_batches]:
            payload = (event.extra or {}).get("payload") or {}
            if payload.get("batch_id") and payload["batch_id"] not in ids:
                ids.append(payload["batch_id"])
        return ids

    # One export per settled batch; rerunning replaces that batch's rows (idempotent).
    CallBatchToWarehouseOperator.partial(
        task_id="export_outcomes",
        include_calls=True,
        warehouse_conn_id=WAREHOUSE_CONN_ID,
        cartesia_conn_id=CARTESIA_CONN_ID,
    ).expand(batch_id=settled_batch_ids())


cartesia_export_on_settle()
