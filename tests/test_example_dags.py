"""The example DAGs: each imports cleanly (no import error, no warning) and passes ``dag.test()``
against the simulator, with its connections given as ``AIRFLOW_CONN_*`` environment variables,
exactly as a newcomer would run them.

``dag.test()`` runs a deferred task's trigger inline, so these runs go through the deferrable path;
tests/test_e2e.py runs ``cartesia_wait_and_export`` on a real triggerer.
"""

from __future__ import annotations

import json
import sqlite3
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.testing.dag_test import run_dag_test

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DAGS = REPO_ROOT / "example_dags"
EXAMPLE_DAG_IDS = {
    "cartesia_wait_and_export",
    "cartesia_campaign",
    "cartesia_daily_outcomes",
    "cartesia_export_on_settle",
}
TABLE = "cartesia_call_batch_recipients"
WAREHOUSE_CONN_ID = "cartesia_warehouse"


def load_example_dags() -> tuple[Any, list[warnings.WarningMessage]]:
    """A DagBag of example_dags/ and every warning raised while filling it (``always``: none hidden)."""
    import airflow  # noqa: F401  (airflow's own import-time warnings are not the examples')

    from tests.helpers import dag_bag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = dag_bag(str(EXAMPLE_DAGS))
    return bag, caught


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples poll every minute; here every 50 ms (the simulator's clock moves per request)."""
    monkeypatch.setenv("CARTESIA_POKE_INTERVAL", "0.05")


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SQLite warehouse file behind the ``cartesia_warehouse`` connection."""
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    return path


@pytest.fixture
def ticking(cartesia_simulator: CartesiaSimulator) -> Iterator[CartesiaSimulator]:
    """The simulator, its clock moving 20 simulated seconds per request (a batch settles in a few polls)."""
    cartesia_simulator.clock.tick_per_request = 20.0
    yield cartesia_simulator
    cartesia_simulator.clock.tick_per_request = 0.0


def example_dag(dag_id: str) -> Any:
    bag, _ = load_example_dags()
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def task_states(run: Any) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    return run.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def warehouse_rows(path: Path, batch_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {TABLE} WHERE batch_id = ?", (batch_id,))]


# -- every example imports cleanly ------------------------------------------------------------------


def test_every_example_dag_imports_without_errors_or_warnings() -> None:
    bag, caught = load_example_dags()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS
    assert bag.captured_warnings == {}
    ours = [w for w in caught if str(EXAMPLE_DAGS) in w.filename or "airflow_provider_cartesia" in w.filename]
    assert not ours, [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in ours]
    for dag in bag.dags.values():
        assert "cartesia" in dag.tags
        assert dag.doc_md or dag.description, f"{dag.dag_id} says nothing about itself"


# -- cartesia_wait_and_export ---------------------------------------------------------------------


@pytest.mark.dagtest
def test_wait_and_export_waits_for_every_call_then_exports_one_row_per_recipient(
    airflow_db: None, fast_polls: None, warehouse: Path, cartesia_conn_id: str, ticking: CartesiaSimulator
) -> None:
    sim = ticking
    batch_id = sim.seed_batch(name="Spring renewals", recipients=12)
    dag = example_dag("cartesia_wait_and_export")

    run = run_dag_test(dag, run_conf={"batch_id": batch_id})

    assert run.state == "success", task_states(run)
    summary = xcom(run, "wait_for_batch")
    assert summary["batch_id"] == batch_id
    assert summary["total_calls_finished"] == summary["total_calls_scheduled"] == 12
    assert sim.count("GET", "/agents/calls/batches/*") >= 3  # a first poke, then the trigger's polls

    rows = warehouse_rows(warehouse, batch_id)
    assert len(rows) == 12
    assert {r["recipient_id"] for r in rows} == {r["id"] for r in sim.batch(batch_id)["recipients"]}
    assert all(r["status"] in ("completed", "failed") for r in rows)
    assert all(r["batch_name"] == "Spring renewals" for r in rows)
    answered = [r for r in rows if r["call_status"] == "completed"]
    assert answered and all(r["call_duration_seconds"] > 0 for r in answered)

    # A rerun replaces the batch's rows: still one per recipient.
    assert run_dag_test(dag, run_conf={"batch_id": batch_id}).state == "success"
    assert len(warehouse_rows(warehouse, batch_id)) == 12


@pytest.mark.dagtest
def test_wait_and_export_rejects_a_run_without_a_batch_id(airflow_db: None) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    dag = example_dag("cartesia_wait_and_export")
    with pytest.raises(ParamValidationError):
        dag.params.validate()


# -- cartesia_daily_outcomes ----------------------------------------------------------------------


def warehouse_table(path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Every row but its ``exported_at``, by (batch_id, recipient_id)."""
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute(f"SELECT * FROM {TABLE}")]
    return {(r["batch_id"], r["recipient_id"]): tuple(v for k, v in r.items() if k != "exported_at") for r in rows}


@pytest.mark.dagtest
def test_daily_outcomes_catch_up_and_reruns_converge_to_the_same_table(
    airflow_db: None, warehouse: Path, cartesia_conn_id: str, cartesia_simulator: CartesiaSimulator
) -> None:
    sim = cartesia_simulator
    now = sim.clock.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    day1, day2, day3 = (today - timedelta(days=n) for n in (3, 2, 1))
    a = sim.seed_batch(name="A", recipients=4, created_at=day1 + timedelta(hours=10))
    # Created a minute before midnight, its calls end on day 3: day 3's run exports it, not day 2's.
    b = sim.seed_batch(
        name="B",
        recipients=4,
        created_at=day2 + timedelta(hours=23, minutes=59),
        call_seconds=(120, 180),
        outcomes={"completed": 1.0},
    )
    c = sim.seed_batch(name="C", recipients=4, created_at=day3 + timedelta(hours=9))
    sim.seed_batch(name="today", recipients=4, created_at=now)  # today's run will export this one
    dag = example_dag("cartesia_daily_outcomes")
    task_id = "export_batches_updated_that_day"

    exported = {}
    for day in (day1, day2, day3):  # catching up, day by day
        run = run_dag_test(dag, logical_date=day + timedelta(days=1))  # the run at the end of `day`
        assert run.state == "success", task_states(run)
        assert (run.data_interval_start, run.data_interval_end) == (day, day + timedelta(days=1))
        exported[day] = xcom(run, task_id)["batch_ids"]
    assert exported == {day1: [a], day2: [], day3: [c, b]} or exported == {day1: [a], day2: [], day3: [b, c]}
    first_pass = warehouse_table(warehouse)
    assert {batch for batch, _ in first_pass} == {a, b, c}
    assert len(first_pass) == 12

    lists_before = sim.count("GET", "/agents/calls/batches")
    for day in (day3, day1, day2):  # the same days again, in another order
        assert run_dag_test(dag, logical_date=day + timedelta(days=1)).state == "success"
    assert sim.count("GET", "/agents/calls/batches") >= lists_before + 3  # each rerun read the list again
    assert warehouse_table(warehouse) == first_pass


# -- cartesia_campaign ----------------------------------------------------------------------------


def seed_contacts(path: Path, count: int, do_not_call: set[int]) -> None:
    """The ``campaign_contacts`` table the example reads: phone, customer_id, plan, do_not_call."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE campaign_contacts (customer_id TEXT, phone TEXT, plan TEXT, do_not_call INTEGER)")
        conn.executemany(
            "INSERT INTO campaign_contacts VALUES (?, ?, ?, ?)",
            [
                (f"cust_{i:04d}", f"+1415555{i:04d}", ("basic", "plus", "pro")[i % 3], int(i in do_not_call))
                for i in range(count)
            ],
        )


@pytest.mark.dagtest
def test_campaign_creates_one_batch_from_the_contacts_waits_exports_and_reports(
    airflow_db: None, fast_polls: None, warehouse: Path, cartesia_conn_id: str, ticking: CartesiaSimulator
) -> None:
    sim = ticking
    seed_contacts(warehouse, 30, do_not_call={3, 7})
    dag = example_dag("cartesia_campaign")

    run = run_dag_test(dag, run_conf={"agent_id": "agent_renewals", "from_number_id": "pn_main"})

    assert run.state == "success", task_states(run)
    assert sim.count("POST", "/agents/calls/batches") == 1
    (batch_id,) = sim.batch_ids()
    batch = sim.batch(batch_id)
    assert batch["agent_id"] == "agent_renewals"
    assert batch["name"].startswith("Renewal reminders")
    assert batch["total_calls_finished"] == batch["total_calls_scheduled"] == 28  # do-not-call contacts left out
    assert xcom(run, "create_batch") == batch_id

    rows = warehouse_rows(warehouse, batch_id)
    assert len(rows) == 28
    assert {json.loads(r["metadata"])["customer_id"] for r in rows} == {
        f"cust_{i:04d}" for i in range(30) if i not in (3, 7)
    }
    reported = xcom(run, "report")
    assert sum(reported.values()) == 28
    assert reported == {s: sum(1 for r in rows if r["status"] == s) for s in {r["status"] for r in rows}}
