"""pytest fixtures for the Cartesia simulator.

Opt in from a test module or the root ``conftest.py``::

    pytest_plugins = ["airflow_provider_cartesia.testing.pytest_plugin"]

- ``cartesia_simulator_server`` (session): one running simulator for the whole test run.
- ``cartesia_simulator`` (function): that server, reset before the test (no batches, no faults,
  empty request log, clock back at its start, latency 0); the test fails at teardown if the
  simulator raised errors while serving it (``server_errors``).
- ``cartesia_connection`` (function): Airflow's ``cartesia_default`` connection pointing at that
  fresh simulator, set as ``AIRFLOW_CONN_CARTESIA_DEFAULT`` for this test only; returns the
  connection id. A DAG test is then three lines (docs/testing.md)::

      def test_my_dag(cartesia_connection, cartesia_simulator):
          batch_id = cartesia_simulator.seed_batch(recipients=5, outcomes={"completed": 1})
          cartesia_simulator.clock.advance(3600)
          run_dag_test(my_dag, run_conf={"batch_id": batch_id})
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_cartesia.testing.simulator import CartesiaSimulator


@pytest.fixture(scope="session")
def cartesia_simulator_server() -> Iterator[CartesiaSimulator]:
    """One simulator on 127.0.0.1 (ephemeral port) for the test session."""
    with CartesiaSimulator() as sim:
        yield sim


@pytest.fixture
def cartesia_simulator(cartesia_simulator_server: CartesiaSimulator) -> Iterator[CartesiaSimulator]:
    """The session simulator, freshly reset; fails the test if the simulator itself broke."""
    sim = cartesia_simulator_server
    sim.reset()
    sim.latency = 0.0
    yield sim
    if sim.server_errors:
        errors = "; ".join(repr(e) for e in sim.server_errors)
        pytest.fail(f"the Cartesia simulator raised {len(sim.server_errors)} error(s) while serving: {errors}")


CONNECTION_ENV = "AIRFLOW_CONN_CARTESIA_DEFAULT"


@pytest.fixture
def cartesia_connection(cartesia_simulator: CartesiaSimulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """``cartesia_default`` pointing at the fresh simulator (env var, undone after the test)."""
    monkeypatch.setenv(CONNECTION_ENV, cartesia_simulator.connection_json())
    return "cartesia_default"
