"""Helpers shared by test modules (import these, never ``tests.conftest``: it configures Airflow)."""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_cartesia.testing import CartesiaSimulator


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


def run_dag_test(dag: Any, **kwargs: Any) -> Any:
    """``dag.test()`` once the DAG is serialized in the metadata DB, as the DAG processor would write it.

    Airflow 3.3's ``dag.test()`` runs only DAGs it finds serialized, and a DAG defined in a test
    module lives in no DAG bundle.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session
        )
    return dag.test(**kwargs)
