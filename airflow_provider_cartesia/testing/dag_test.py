"""Run a DAG defined in a test module with ``dag.test()``.

Airflow 3.3's ``dag.test()`` runs only a DAG it finds serialized in the metadata database, and a DAG
defined in a test file belongs to no DAG bundle, so it is written there first, as the DAG processor
would. Airflow is imported only when called (this package stays airflow-free at import).
"""

from __future__ import annotations

from typing import Any


def run_dag_test(dag: Any, **kwargs: Any) -> Any:
    """Serialize ``dag`` into the metadata database, then ``dag.test(**kwargs)``; returns the DagRun.

    Airflow 3.0's Task SDK DAG has no ``test()``: its scheduler DAG runs it, as ``airflow dags test``
    does there.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    from airflow_provider_cartesia.compat import AIRFLOW_V_3_1_PLUS

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    if not AIRFLOW_V_3_1_PLUS:
        from airflow.models.dag import DAG

        scheduler_dag = DAG.from_sdk_dag(dag)
        with create_session() as session:  # the DAG's row and its assets (outlets must be active)
            DAG.bulk_write_to_db("dags-folder", None, [scheduler_dag], session=session)
        return scheduler_dag.test(**kwargs)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session
        )
    return dag.test(**kwargs)
