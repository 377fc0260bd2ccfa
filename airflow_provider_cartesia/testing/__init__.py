"""Test support for airflow-provider-cartesia: a local simulator of the Cartesia agent-calls API.

``CartesiaSimulator`` serves the batch and call endpoints over real HTTP on 127.0.0.1, with time
driven by a ``SimClock`` and failures injected as ``Fault``s. Standard library only; no airflow.
pytest users opt in with ``pytest_plugins = ["airflow_provider_cartesia.testing.pytest_plugin"]``
(fixtures ``cartesia_simulator``, ``cartesia_simulator_server`` and ``cartesia_connection``) and run
their DAGs with ``testing.dag_test.run_dag_test``; a shell runs
``python -m airflow_provider_cartesia.testing [--scenario NAME]``. How-to: docs/testing.md; what the
simulator assumes where Cartesia's docs are silent: docs/simulator.md.
"""

from __future__ import annotations

from airflow_provider_cartesia.testing.clock import SimClock
from airflow_provider_cartesia.testing.faults import Fault
from airflow_provider_cartesia.testing.recording import RecordedRequest
from airflow_provider_cartesia.testing.simulator import DEFAULT_API_KEY, CartesiaSimulator
from airflow_provider_cartesia.testing.state import OUTCOME_KINDS, BatchTimes

__all__ = [
    "DEFAULT_API_KEY",
    "OUTCOME_KINDS",
    "BatchTimes",
    "CartesiaSimulator",
    "Fault",
    "RecordedRequest",
    "SimClock",
]
