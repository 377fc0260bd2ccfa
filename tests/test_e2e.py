"""End to end on Airflow as deployed: api-server, scheduler, dag-processor and triggerer, each its own
process, with the LocalExecutor and a PostgreSQL metadata database of the test's own.

The Cartesia simulator runs as a subprocess (its CLI) on a manual clock that moves 20 simulated
seconds per request, so the batch settles after a fixed number of polls however slowly the services
start; the warehouse is a SQLite file. The test triggers ``cartesia_wait_and_export`` through the
REST API and checks that

- the sensor deferred (its state was ``deferred``, and a trigger log exists for its attempt);
- the trigger ran in the triggerer process (the trigger log file is named after a ``TriggererJob``
  and holds the trigger's progress lines and its event);
- the run succeeded and the warehouse holds one row per recipient of the batch;
- every process of the run is gone afterwards, also when the test fails (checked in teardown too).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.e2e_services import (
    AirflowApi,
    Processes,
    airflow_environment,
    database_uri,
    free_port,
    libpq_uri,
    postgres_database,
    tail,
    wait_for,
    write_passwords_file,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "cartesia_wait_and_export"
EVENT_DAG_ID = "cartesia_export_on_settle"
SENSOR_TASK = "wait_for_batch"
EXPORT_TASK = "export_outcomes"
RECIPIENTS = 12
TICK_SECONDS = 20  # simulated seconds per request: the batch settles after about six polls
TERMINAL_RUN_STATES = {"success", "failed"}
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@dataclass
class Deployment:
    api: AirflowApi
    processes: Processes
    airflow_home: Path
    metadata_uri: str
    warehouse: Path
    batch_id: str


def _start_simulator(processes: Processes, env: dict[str, str], port: int, api_key: str) -> str:
    """The simulator CLI with one seeded batch; returns the batch id (read from its output)."""
    service = processes.start(
        "simulator",
        [
            sys.executable,
            "-m",
            "airflow_provider_cartesia.testing",
            "--port",
            str(port),
            "--seed-batch",
            str(RECIPIENTS),
            "--tick",
            str(TICK_SECONDS),
        ],
        {**env, "CARTESIA_SIMULATOR_API_KEY": api_key},
        cwd=REPO_ROOT,
        grace=5,
    )

    def seeded() -> str | None:
        if not service.running():
            raise RuntimeError(service.describe())
        match = re.search(r"Seeded batch: (acb_\w+)", service.log_path.read_text())
        return match.group(1) if match else None

    return wait_for("the simulator to start", seeded, timeout=60)


@pytest.fixture
def deployment(postgres_uri: str, tmp_path: Path) -> Iterator[Deployment]:
    airflow_home = tmp_path / "airflow-home"
    airflow_home.mkdir()
    processes = Processes(log_dir=tmp_path / "service-logs")
    api_port, sim_port = free_port(), free_port()
    username = "e2e_admin"
    password = write_passwords_file(tmp_path / "passwords.json", username)
    sim_key = f"sk_car_e2e_{time.time_ns()}"
    warehouse = tmp_path / "warehouse.db"
    with postgres_database(postgres_uri) as database:
        metadata_uri = database_uri(postgres_uri, database)
        env = airflow_environment(
            airflow_home=airflow_home,
            dags_folder=REPO_ROOT / "example_dags",
            sql_alchemy_conn=metadata_uri,
            api_port=api_port,
            passwords_file=tmp_path / "passwords.json",
            username=username,
            connections={
                "cartesia_default": json.dumps(
                    {"conn_type": "cartesia", "host": f"http://127.0.0.1:{sim_port}", "password": sim_key}
                ),
                "cartesia_warehouse": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
            },
            # The event DAG (paused unless a test unpauses it) exports batches settled since the start.
            extra={"CARTESIA_POKE_INTERVAL": "1", "CARTESIA_EVENTS_SINCE": "2000-01-01T00:00:00Z"},
        )
        try:
            migrate = subprocess.run(
                [AIRFLOW, "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
            )
            assert migrate.returncode == 0, (
                f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
            )
            batch_id = _start_simulator(processes, env, sim_port, sim_key)
            processes.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port)], env)
            processes.start("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], env)
            processes.start("dag-processor", [AIRFLOW, "dag-processor"], env)
            processes.start("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], env, grace=30)
            yield Deployment(
                api=AirflowApi(f"http://127.0.0.1:{api_port}", username, password),
                processes=processes,
                airflow_home=airflow_home,
                metadata_uri=metadata_uri,
                warehouse=warehouse,
                batch_id=batch_id,
            )
        finally:
            processes.stop_all()
            left = processes.survivors()
            assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


def _wait_until_ready(deployment: Deployment, dag_id: str = DAG_ID) -> None:
    api, processes = deployment.api, deployment.processes
    needed = {"metadatabase", "scheduler", "triggerer", "dag_processor"}

    def healthy() -> bool:
        processes.check_alive()
        return needed <= api.healthy_components()

    wait_for(f"{', '.join(sorted(needed))} to report healthy", healthy, timeout=240, interval=0.5)
    api.login()

    def parsed() -> bool:
        processes.check_alive()
        errors = api.import_errors()
        if errors:
            raise AssertionError(f"import errors in example_dags: {errors}")
        return api.dag(dag_id) is not None

    wait_for(f"the dag-processor to parse {dag_id}", parsed, timeout=180, interval=0.5)


def _run_logs(deployment: Deployment, dag_id: str, run_id: str | None = None) -> str:
    """Every task and trigger log of the run (of the DAG, without a run id) and the services' last lines,
    whole, for a failure message: the test's tmp_path does not outlive other pytest sessions for long."""
    folder = deployment.airflow_home / "logs" / f"dag_id={dag_id}"
    if run_id is not None:
        folder = folder / f"run_id={run_id}"
    parts = [deployment.processes.describe()]
    parts += [f"--- {log}\n{tail(log, 400)}" for log in sorted(folder.glob("**/*.log*"))]
    return "\n".join(parts)


def _triggerer_job_ids(metadata_uri: str) -> set[int]:
    import psycopg

    with psycopg.connect(libpq_uri(metadata_uri)) as conn:
        rows = conn.execute("SELECT id FROM job WHERE job_type = 'TriggererJob'").fetchall()
    return {int(row[0]) for row in rows}


@pytest.mark.e2e
@pytest.mark.postgres
def test_wait_and_export_on_separate_airflow_services(deployment: Deployment) -> None:
    started = time.monotonic()
    api = deployment.api
    try:
        _wait_until_ready(deployment)
        api.unpause(DAG_ID)
        run_id = api.trigger(DAG_ID, {"batch_id": deployment.batch_id})

        sensor_states: list[str] = []

        def finished() -> dict[str, object] | None:
            deployment.processes.check_alive()
            state = api.task_instances(DAG_ID, run_id).get(SENSOR_TASK, {}).get("state")
            if state and (not sensor_states or sensor_states[-1] != state):
                sensor_states.append(state)
            run = api.dag_run(DAG_ID, run_id)
            return run if run["state"] in TERMINAL_RUN_STATES else None

        run = wait_for(f"run {run_id} to finish", finished, timeout=300, interval=0.3)
        tis = api.task_instances(DAG_ID, run_id)
    except BaseException:
        print(_run_logs(deployment, DAG_ID), file=sys.stderr)
        raise

    task_states = {task_id: ti["state"] for task_id, ti in tis.items()}
    assert run["state"] == "success", (
        f"run {run_id} ended {run['state']}; tasks: {task_states}; sensor states seen: {sensor_states}\n"
        f"{_run_logs(deployment, DAG_ID, run_id)}"
    )
    assert task_states == {SENSOR_TASK: "success", EXPORT_TASK: "success"}
    # On the first try: the generous waits above leave room for a retry, which would hide a failure.
    assert {task_id: ti["try_number"] for task_id, ti in tis.items()} == {SENSOR_TASK: 1, EXPORT_TASK: 1}

    # The sensor deferred: seen in state `deferred`, and its attempt has a trigger log.
    assert "deferred" in sensor_states, f"the sensor never deferred; states seen: {sensor_states}"
    attempt_dir = deployment.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={SENSOR_TASK}"
    trigger_logs = sorted(attempt_dir.glob("attempt=1.log.trigger.*.log"))
    assert len(trigger_logs) == 1, f"expected one trigger log in {attempt_dir}: {sorted(attempt_dir.iterdir())}"

    # ... written by the triggerer: the file is named after a TriggererJob, and holds the trigger's polls.
    job_id = int(trigger_logs[0].name.rsplit(".", 2)[-2])
    assert job_id in _triggerer_job_ids(deployment.metadata_uri), f"{trigger_logs[0].name}: not a TriggererJob id"
    trigger_log = trigger_logs[0].read_text()
    assert f"{deployment.batch_id} completed: {RECIPIENTS} of {RECIPIENTS} calls finished" in trigger_log, trigger_log
    assert "Trigger fired event" in trigger_log, trigger_log
    assert "'status': 'success'" in trigger_log, trigger_log

    # The export wrote one row per recipient, each with a final outcome.
    with sqlite3.connect(deployment.warehouse) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM cartesia_call_batch_recipients WHERE batch_id = ? GROUP BY status",
            (deployment.batch_id,),
        ).fetchall()
    by_status = dict(rows)
    assert sum(by_status.values()) == RECIPIENTS, by_status
    assert set(by_status) <= {"completed", "failed"}, by_status

    # Every process stops, and none is left behind (the fixture checks again after a failure).
    deployment.processes.stop_all()
    left = deployment.processes.survivors()
    assert not left, f"processes left behind: {[(p.pid, p.name(), p.cmdline()[:3]) for p in left]}"
    print(f"e2e: run succeeded and services stopped {time.monotonic() - started:.1f} s after start-up finished")


@pytest.mark.e2e
@pytest.mark.postgres
def test_a_settled_batch_starts_its_export_through_an_asset_event(deployment: Deployment) -> None:
    """``cartesia_export_on_settle``: the triggerer's CallBatchEventTrigger sees the seeded batch settle,
    the asset event schedules a run, the run exports that batch. Nobody passes a batch id."""
    api = deployment.api
    try:
        _wait_until_ready(deployment, EVENT_DAG_ID)
        api.unpause(EVENT_DAG_ID)

        def exported() -> dict[str, object] | None:
            deployment.processes.check_alive()
            runs = [r for r in api.dag_runs(EVENT_DAG_ID) if r["state"] in TERMINAL_RUN_STATES]
            return runs[0] if runs else None

        run = wait_for(f"a run of {EVENT_DAG_ID} to finish", exported, timeout=300, interval=0.5)
        tis = api.task_instances(EVENT_DAG_ID, str(run["dag_run_id"]))
    except BaseException:
        print(_run_logs(deployment, EVENT_DAG_ID), file=sys.stderr)
        raise

    assert run["state"] == "success", (
        run,
        {k: ti["state"] for k, ti in tis.items()},
        _run_logs(deployment, EVENT_DAG_ID, str(run["dag_run_id"])),
    )
    assert run["run_type"] == "asset_triggered", run
    assert not (run.get("conf") or {}).get("batch_id")  # the id came from the event, not from a person
    events = [e for e in api.asset_events() if e["asset_id"] is not None]
    payloads = [(e.get("extra") or {}).get("payload") or {} for e in events]
    assert [p.get("batch_id") for p in payloads] == [deployment.batch_id], payloads
    assert payloads[0]["outcome"] == "success" and payloads[0]["total_calls_finished"] == RECIPIENTS
    with sqlite3.connect(deployment.warehouse) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM cartesia_call_batch_recipients WHERE batch_id = ?", (deployment.batch_id,)
        ).fetchone()
    assert count == RECIPIENTS


_TREE = """
import subprocess, sys, time
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
print("child", child.pid, flush=True)
time.sleep(120)
"""


def test_stop_all_ends_whole_trees_and_survivors_finds_what_is_left(tmp_path: Path) -> None:
    """The teardown's guarantees, on a tree like a task's: a child in a session of its own that
    ignores SIGTERM is found while it lives, and killed after the grace period."""
    processes = Processes(log_dir=tmp_path)
    service = processes.start("tree", [sys.executable, "-c", _TREE], dict(os.environ), grace=1)

    def child_pid() -> int | None:
        match = re.search(r"child (\d+)", service.log_path.read_text())
        return int(match.group(1)) if match else None

    child = wait_for("the child to start", child_pid, timeout=10)
    assert {service.pid, child} <= {p.pid for p in processes.survivors()}
    assert os.getpgid(child) != os.getpgid(service.pid)

    processes.stop_all()

    assert processes.survivors() == []
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
