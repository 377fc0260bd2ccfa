"""End to end on a distributed deployment: the CeleryExecutor with two workers, one of them lost mid-export.

api-server, scheduler, dag-processor, triggerer and two ``airflow celery worker`` processes (hostnames,
log-server ports and pid files of their own), each its own process; PostgreSQL holds the metadata, the
Celery results and the warehouse (databases of the test's own, dropped after); the machine's Redis is
the broker (a database number of the test's own, flushed after). The simulator runs inside the test on
a manual clock, so batches settle after a number of polls, however slowly the services run. The
workers share this machine, so each reports a hostname of its own (``[core] hostname_callable``).

1. Four runs of ``cartesia_wait_and_export`` at once, each on a batch of its own: every sensor deferred
   and its trigger ran in the triggerer (a trigger log named after a ``TriggererJob``, with the batch's
   progress and the event), tasks ran on both workers (task instance ``hostname``), each batch has
   exactly one row per recipient, and the trigger rows stored while the sensors waited hold the batch
   id but not the API key.
2. A fifth run, whose export the test catches mid-write: the test holds an uncommitted row with the key
   of the batch's last recipient, so the export's ``COPY`` blocks on it with every other row already
   written in its open transaction (seen in ``pg_stat_activity`` and ``pg_stat_progress_copy``). The
   worker running it is lost with SIGKILL (its whole process tree); the scheduler fails the try when
   its heartbeats stop, and the retry on the other worker writes exactly one row per recipient.
3. No API key in any file the run wrote (service and task logs) or anywhere in the metadata database;
   no phone number in any log.

Every process is stopped at the end, and none is left (checked in teardown too, also after a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from airflow_provider_cartesia.testing import CartesiaSimulator
from airflow_provider_cartesia.testing.clock import SimClock
from tests.e2e_services import (
    WORKER_HOSTNAME_VARIABLE,
    AirflowApi,
    Processes,
    Service,
    airflow_environment,
    celery_settings,
    database_uri,
    find_in_database,
    find_in_files,
    free_port,
    postgres_database,
    redis_database,
    tail,
    triggerer_job_ids,
    wait_for,
    write_passwords_file,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "cartesia_wait_and_export"
SENSOR_TASK = "wait_for_batch"
EXPORT_TASK = "export_outcomes"
TABLE = "cartesia_call_batch_recipients"
BATCH_SIZES = (8, 12, 16, 20)  # four runs at once: more sensor tasks than one worker has slots
KILL_BATCH_SIZE = 40
TICK_SECONDS = 5  # simulated seconds per request: each batch takes some polls to settle
WORKERS = ("cartesia-e2e-worker-a", "cartesia-e2e-worker-b")
WORKER_CONCURRENCY = 2
HEARTBEAT_TIMEOUT = 20
TERMINAL_RUN_STATES = {"success", "failed"}
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
REDIS_URL = os.environ.get("CARTESIA_TEST_REDIS", "redis://127.0.0.1:6379")
REQUIRE_SERVERS = os.environ.get("CARTESIA_REQUIRE_SERVERS", "") not in ("", "0", "false")


@dataclass
class CeleryDeployment:
    api: AirflowApi
    processes: Processes
    root: Path
    airflow_home: Path
    metadata_dsn: str
    warehouse_dsn: str
    warehouse_db: str
    simulator: CartesiaSimulator
    api_key: str
    fernet_key: str
    workers: dict[str, Service] = field(default_factory=dict)

    @contextlib.contextmanager
    def diagnosed(self) -> Iterator[None]:
        """On any failure inside, print every service's and task's last log lines."""
        try:
            yield
        except BaseException:
            print(self.processes.describe(), file=sys.stderr)
            for log in sorted(self.airflow_home.glob("logs/dag_id=*/**/*.log*")):
                print(f"--- {log}\n{tail(log, 40)}", file=sys.stderr)
            raise


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The local Redis server; skips (or fails in CI) when it is not reachable."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:
        message = f"Redis server not reachable ({REDIS_URL}: {type(exc).__name__}: {exc})"
        if REQUIRE_SERVERS:
            pytest.fail(f"{message}; CARTESIA_REQUIRE_SERVERS is set, so this is a failure", pytrace=False)
        pytest.skip(f"{message}; start it to run this test")
    return REDIS_URL


def _warehouse_connection(server_uri: str, database: str) -> str:
    parts = urlsplit(server_uri)
    conn = {
        "conn_type": "postgres",
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "login": parts.username or "postgres",
        "schema": database,
    }
    if parts.password:
        conn["password"] = parts.password
    return json.dumps(conn)


@pytest.fixture
def celery_deployment(postgres_uri: str, redis_url: str, tmp_path: Path) -> Iterator[CeleryDeployment]:
    airflow_home = tmp_path / "airflow-home"
    airflow_home.mkdir()
    processes = Processes(log_dir=tmp_path / "service-logs")
    api_port = free_port()
    username = "e2e_admin"
    password = write_passwords_file(tmp_path / "passwords.json", username)
    api_key = f"sk_car_e2e_celery_{time.time_ns()}"
    simulator = CartesiaSimulator(api_key=api_key, clock=SimClock(tick_per_request=TICK_SECONDS))
    with (
        simulator,
        postgres_database(postgres_uri) as metadata_db,
        postgres_database(postgres_uri, prefix="cartesia_e2e_wh") as warehouse_db,
        redis_database(redis_url) as broker_url,
    ):
        metadata_uri = database_uri(postgres_uri, metadata_db)
        env = airflow_environment(
            airflow_home=airflow_home,
            dags_folder=REPO_ROOT / "example_dags",
            sql_alchemy_conn=metadata_uri,
            api_port=api_port,
            passwords_file=tmp_path / "passwords.json",
            username=username,
            connections={
                "cartesia_default": json.dumps({"conn_type": "cartesia", "host": simulator.url, "password": api_key}),
                "cartesia_warehouse": _warehouse_connection(postgres_uri, warehouse_db),
            },
            extra={
                "AIRFLOW__CORE__PARALLELISM": "8",
                "CARTESIA_POKE_INTERVAL": "1",
                "CARTESIA_RETRY_DELAY": "1",
                **celery_settings(
                    broker_url=broker_url,
                    result_backend=f"db+{metadata_uri}",
                    concurrency=WORKER_CONCURRENCY,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                ),
            },
        )
        deployment = CeleryDeployment(
            api=AirflowApi(f"http://127.0.0.1:{api_port}", username, password),
            processes=processes,
            root=tmp_path,
            airflow_home=airflow_home,
            metadata_dsn=database_uri(postgres_uri, metadata_db, driver="postgresql"),
            warehouse_dsn=database_uri(postgres_uri, warehouse_db, driver="postgresql"),
            warehouse_db=warehouse_db,
            simulator=simulator,
            api_key=api_key,
            fernet_key=env["AIRFLOW__CORE__FERNET_KEY"],
        )
        try:
            migrate = subprocess.run(
                [AIRFLOW, "db", "migrate"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
            )
            assert migrate.returncode == 0, (
                f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
            )
            processes.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port)], env)
            processes.start("scheduler", [AIRFLOW, "scheduler", "--skip-serve-logs"], env)
            processes.start("dag-processor", [AIRFLOW, "dag-processor"], env)
            processes.start("triggerer", [AIRFLOW, "triggerer", "--skip-serve-logs"], env, grace=30)
            for name in WORKERS:
                worker_env = {
                    **env,
                    # Two workers on one machine: a log server port and a task hostname each.
                    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.e2e_services.worker_hostname",
                    WORKER_HOSTNAME_VARIABLE: name,
                    "PYTHONPATH": str(REPO_ROOT),
                }
                args = [AIRFLOW, "celery", "worker", "-H", name, "-c", str(WORKER_CONCURRENCY)]
                args += ["--pid", str(tmp_path / f"{name}.pid")]
                deployment.workers[name] = processes.start(name, args, worker_env, cwd=tmp_path, grace=20)
            yield deployment
        finally:
            processes.stop_all()
            left = processes.survivors()
            assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"


# -- waiting on the deployment ----------------------------------------------------------------------


def _wait_until_ready(deployment: CeleryDeployment) -> None:
    api, processes = deployment.api, deployment.processes
    needed = {"metadatabase", "scheduler", "triggerer", "dag_processor"}

    def healthy() -> bool:
        processes.check_alive()
        return needed <= api.healthy_components()

    wait_for(f"{', '.join(sorted(needed))} to report healthy", healthy, timeout=240, interval=0.5)

    def workers_ready() -> bool:
        processes.check_alive()
        return all(f"{name} ready." in w.log_path.read_text(errors="replace") for name, w in deployment.workers.items())

    wait_for("both Celery workers to be ready", workers_ready, timeout=240, interval=0.5)
    api.login()

    def parsed() -> bool:
        processes.check_alive()
        errors = api.import_errors()
        if errors:
            raise AssertionError(f"import errors in example_dags: {errors}")
        return api.dag(DAG_ID) is not None

    wait_for(f"the dag-processor to parse {DAG_ID}", parsed, timeout=180, interval=0.5)


def _stored_triggers(dsn: str) -> dict[int, tuple[str, str]]:
    """The trigger rows now in the metadata DB: id -> (classpath, encrypted kwargs)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, classpath, kwargs FROM trigger").fetchall()
    return {int(row[0]): (str(row[1]), str(row[2])) for row in rows}


def _warehouse_rows(dsn: str, batch_id: str) -> list[tuple[str, str | None]]:
    """``(recipient_id, status)`` of every row of ``batch_id`` in the export table."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT recipient_id, status FROM {TABLE} WHERE batch_id = %s", (batch_id,)).fetchall()
    return [(str(r[0]), r[1]) for r in rows]


def _recipient_ids(simulator: CartesiaSimulator, batch_id: str) -> list[str]:
    return [str(r["id"]) for r in simulator.batch(batch_id)["recipients"]]


def _blocked_copy(dsn: str, database: str) -> dict[str, Any] | None:
    """The export's ``COPY`` into the warehouse while it waits on a lock: its backend pid, client port and
    how many rows it has written so far (``pg_stat_progress_copy``); None while there is none."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.pid, a.client_port, p.tuples_processed FROM pg_stat_activity a "
            "LEFT JOIN pg_stat_progress_copy p ON p.pid = a.pid "
            "WHERE a.datname = %s AND a.wait_event_type = 'Lock' AND a.query LIKE 'COPY %%'",
            (database,),
        ).fetchone()
    if row is None:
        return None
    return {"backend_pid": int(row[0]), "client_port": int(row[1]), "rows_written": int(row[2] or 0)}


def _process_with_local_port(port: int) -> int | None:
    """The pid of the local process whose TCP connection has local port ``port``."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


# -- the test -----------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.postgres
def test_celery_workers_wait_export_and_survive_a_worker_lost_mid_write(
    celery_deployment: CeleryDeployment,
) -> None:
    started = time.monotonic()
    deployment = celery_deployment
    api, processes, sim = deployment.api, deployment.processes, deployment.simulator
    batches = {sim.seed_batch(name=f"E2E batch {n}", recipients=n): n for n in BATCH_SIZES}
    with deployment.diagnosed():
        _wait_until_ready(deployment)
        ready = time.monotonic()
        api.unpause(DAG_ID)

        # -- 1. four runs at once, on two workers -------------------------------------------------------
        runs = {api.trigger(DAG_ID, {"batch_id": batch_id}): batch_id for batch_id in batches}
        sensor_states: dict[str, list[str]] = {run_id: [] for run_id in runs}
        triggers: dict[int, tuple[str, str]] = {}

        def all_finished() -> dict[str, str] | None:
            processes.check_alive()
            triggers.update(_stored_triggers(deployment.metadata_dsn))
            states = {}
            for run_id in runs:
                state = api.task_instances(DAG_ID, run_id).get(SENSOR_TASK, {}).get("state")
                seen = sensor_states[run_id]
                if state and (not seen or seen[-1] != state):
                    seen.append(state)
                states[run_id] = api.dag_run(DAG_ID, run_id)["state"]
            return states if set(states.values()) <= TERMINAL_RUN_STATES else None

        run_states = wait_for("the four runs to finish", all_finished, timeout=240, interval=0.3)
        tis = {run_id: api.task_instances(DAG_ID, run_id) for run_id in runs}
        phase_one = time.monotonic()

    task_states = {run_id: {t: ti["state"] for t, ti in by_task.items()} for run_id, by_task in tis.items()}
    assert set(run_states.values()) == {"success"}, f"runs: {run_states}; tasks: {task_states}"
    assert all(states == {SENSOR_TASK: "success", EXPORT_TASK: "success"} for states in task_states.values())

    # Every sensor deferred, and its trigger ran in the triggerer: a trigger log per attempt, named
    # after a TriggererJob, with the batch's progress and the event.
    job_ids = triggerer_job_ids(deployment.metadata_dsn)
    for run_id, batch_id in runs.items():
        attempt_dir = (
            deployment.airflow_home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={SENSOR_TASK}"
        )
        trigger_logs = sorted(attempt_dir.glob("attempt=1.log.trigger.*.log"))
        assert len(trigger_logs) == 1, f"expected one trigger log in {attempt_dir}: {sorted(attempt_dir.iterdir())}"
        assert int(trigger_logs[0].name.rsplit(".", 2)[-2]) in job_ids, f"{trigger_logs[0].name}: not a TriggererJob"
        text = trigger_logs[0].read_text()
        size = batches[batch_id]
        assert f"{batch_id} completed: {size} of {size} calls finished" in text, text
        assert "Trigger fired event" in text and "'status': 'success'" in text, text
    assert any("deferred" in seen for seen in sensor_states.values()), f"no sensor seen deferred: {sensor_states}"

    # The trigger rows stored while the sensors waited name their batch, and hold no API key (decrypted).
    from cryptography.fernet import Fernet

    fernet = Fernet(deployment.fernet_key.encode())
    assert triggers, "no trigger row was ever seen while the sensors waited"
    for classpath, encrypted in triggers.values():
        kwargs = encrypted if encrypted.startswith("{") else fernet.decrypt(encrypted.encode()).decode()
        assert classpath.endswith("CallBatchTrigger"), classpath
        assert any(batch_id in kwargs for batch_id in batches), kwargs
        assert deployment.api_key not in kwargs

    # Tasks ran on both workers.
    hostnames = {ti["hostname"] for by_task in tis.values() for ti in by_task.values()}
    assert hostnames == set(WORKERS), f"tasks ran on {hostnames}, expected both of {WORKERS}"

    # Exactly one row per recipient of each batch.
    for batch_id in batches:
        rows = _warehouse_rows(deployment.warehouse_dsn, batch_id)
        assert sorted(r for r, _ in rows) == sorted(_recipient_ids(sim, batch_id)), batch_id
        assert all(status in ("completed", "failed") for _, status in rows), rows

    # -- 2. a worker lost in the middle of an export ----------------------------------------------------
    import psycopg

    kill_batch = sim.seed_batch(
        name="E2E batch lost worker", recipients=KILL_BATCH_SIZE, created_at=sim.clock.now() - timedelta(days=1)
    )
    recipients = _recipient_ids(sim, kill_batch)
    blocker = psycopg.connect(deployment.warehouse_dsn)
    with deployment.diagnosed():
        try:
            # An uncommitted row with the last recipient's key: the export's COPY waits for it, mid-write.
            blocker.execute(
                f"INSERT INTO {TABLE} (batch_id, recipient_id) VALUES (%s, %s)", (kill_batch, recipients[-1])
            )
            run_id = api.trigger(DAG_ID, {"batch_id": kill_batch})

            def export_blocked() -> dict[str, Any] | None:
                processes.check_alive()
                return _blocked_copy(deployment.metadata_dsn, deployment.warehouse_db)

            blocked = wait_for("the export to block mid-write", export_blocked, timeout=180, interval=0.3)
            assert blocked["rows_written"] > 0, f"the export had written nothing yet: {blocked}"
            export_ti = api.task_instances(DAG_ID, run_id)[EXPORT_TASK]
            assert export_ti["state"] == "running" and export_ti["try_number"] == 1, export_ti
            lost_name = export_ti["hostname"]
            assert lost_name in WORKERS, export_ti
            client = wait_for(
                "the process holding the export's connection",
                lambda: _process_with_local_port(blocked["client_port"]),
                timeout=10,
            )
            owner = processes.owner_of(client)
            assert owner is deployment.workers[lost_name], f"pid {client} belongs to {owner and owner.name}"

            killed = processes.kill_tree(owner)
            assert client in killed
        finally:
            blocker.rollback()
            blocker.close()
    survivor = next(name for name in WORKERS if name != lost_name)
    killed_at = time.monotonic()

    with deployment.diagnosed():

        def run_finished() -> dict[str, Any] | None:
            processes.check_alive()
            run = api.dag_run(DAG_ID, run_id)
            return run if run["state"] in TERMINAL_RUN_STATES else None

        run = wait_for(f"run {run_id} to finish after the worker was lost", run_finished, timeout=240, interval=0.5)
        tries = api.task_instance_tries(DAG_ID, run_id, EXPORT_TASK)
    converged = time.monotonic()
    assert run["state"] == "success", f"run {run_id} ended {run['state']}: {api.task_instances(DAG_ID, run_id)}"
    assert [(t["try_number"], t["hostname"], t["state"]) for t in tries] == [
        (1, lost_name, "failed"),
        (2, survivor, "success"),
    ], tries
    rows = _warehouse_rows(deployment.warehouse_dsn, kill_batch)
    assert sorted(r for r, _ in rows) == sorted(recipients)
    assert all(status in ("completed", "failed") for _, status in rows), rows

    # -- 3. no API key anywhere the run left data; no phone number in any log ------------------------
    all_batches = [*batches, kill_batch]
    found = find_in_database(deployment.metadata_dsn, [deployment.api_key, *all_batches])
    assert not found[deployment.api_key], f"API key stored in tables {sorted(found[deployment.api_key])}"
    # ... and the search reads what a leak would go through (XCom, rendered template fields, results).
    assert {"xcom", "rendered_task_instance_fields"} <= set.union(*(found[b] for b in all_batches)), found
    with psycopg.connect(deployment.metadata_dsn) as conn:
        stored = conn.execute("SELECT conn_id FROM connection").fetchall()
    assert stored == [], f"connections are env-only here, yet the DB holds {stored}"

    numbers = sorted({r["to_number"] for b in all_batches for r in sim.batch(b)["recipients"]})
    in_files, files_read = find_in_files(deployment.root, [deployment.api_key, *numbers, kill_batch])
    assert files_read > 10 and in_files[kill_batch], "the log search read no task log"
    assert not in_files[deployment.api_key], f"API key in {sorted(in_files[deployment.api_key])}"
    leaked = {n: sorted(str(p) for p in in_files[n]) for n in numbers if in_files[n]}
    assert not leaked, f"phone numbers in files: {leaked}"

    processes.stop_all()
    left = processes.survivors()
    assert not left, f"processes left behind: {[(p.pid, p.name(), p.cmdline()[:3]) for p in left]}"
    print(
        f"e2e celery: ready {ready - started:.1f} s, four runs {phase_one - ready:.1f} s, "
        f"{lost_name} killed with its COPY at row {blocked['rows_written']} of {KILL_BATCH_SIZE}, "
        f"retry converged on {survivor} {converged - killed_at:.1f} s after the kill, "
        f"total {time.monotonic() - started:.1f} s"
    )
